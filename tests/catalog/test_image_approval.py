"""Approval (security admins and admins), sharing with other projects, and object grants that let one designer of
another project edit one image."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from apps.accounts import services as account_services
from apps.accounts.models import Project, User
from apps.catalog import images
from apps.catalog.models import Image, ImageShare, image_usable_by_project
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from apps.core.roles import Role
from tests.catalog.conftest import needs_qemu, upload

pytestmark = [pytest.mark.django_db, needs_qemu]


@pytest.fixture
def image(dennis, web, disk) -> Image:
    return upload(dennis, web, disk("qcow2"))


def audit_rows(verb: str, image: Image):
    return AuditEvent.objects.all_tenants().filter(verb=verb, object_type="image", object_id=str(image.pk))


@pytest.mark.parametrize("who", ["sarah", "sam"])
def test_security_admin_and_admin_approve(who, personas, image, web):
    approver = personas[who]
    approved = images.image_approve(actor=approver, image=image, note="Scanned, CIS level 1.")
    image.refresh_from_db()
    assert approved.is_approved and image.approval == Image.Approval.APPROVED
    assert (image.approved_by, image.approval_note) == (approver, "Scanned, CIS level 1.")
    assert image_usable_by_project(image, web.pk)
    row = audit_rows("image.approve", image).get()
    assert row.actor == approver
    assert row.changes["approval"] == {"from": "pending", "to": "approved"}


@pytest.mark.parametrize("who", ["dennis", "marty", "connor", "mallory"])
def test_others_cannot_approve(who, personas, image):
    with pytest.raises(PermissionDenied):
        images.image_approve(actor=personas[who], image=image)
    image.refresh_from_db()
    assert image.approval == Image.Approval.PENDING
    assert not audit_rows("image.approve", image).exists()


def test_only_ready_images_are_approved(sarah, image):
    Image.objects.all_tenants().filter(pk=image.pk).update(state=Image.State.FAILED)
    image.refresh_from_db()
    with pytest.raises(ServiceError, match="only a ready image"):
        images.image_approve(actor=sarah, image=image)
    image.refresh_from_db()
    assert image.approval == Image.Approval.PENDING


def test_revoke_needs_a_note_and_is_audited(sarah, image, web):
    images.image_approve(actor=sarah, image=image)
    with pytest.raises(ServiceError) as caught:
        images.image_revoke(actor=sarah, image=image, note="  ")
    assert "note" in caught.value.message_dict
    image.refresh_from_db()
    assert image.is_approved
    images.image_revoke(actor=sarah, image=image, note="CVE-2026-1234 in openssl")
    image.refresh_from_db()
    assert image.approval == Image.Approval.REVOKED and image.approval_note == "CVE-2026-1234 in openssl"
    assert not image_usable_by_project(image, web.pk)
    row = audit_rows("image.revoke", image).get()
    assert row.changes["approval"] == {"from": "approved", "to": "revoked"}
    with pytest.raises(PermissionDenied):
        images.image_revoke(actor=User.objects.get(username="dennis"), image=image, note="nope")


def test_share_with_another_project(dennis, sarah, image, data, ops, web, acme):
    image = images.image_approve(actor=sarah, image=image)
    assert not image_usable_by_project(image, data.pk)
    share = images.image_share(actor=dennis, image=image, project=data)
    assert image_usable_by_project(image, data.pk)
    assert audit_rows("image.share", image).get().changes["_"] == {"project": "data"}
    with pytest.raises(ServiceError, match="already shared"):
        images.image_share(actor=dennis, image=image, project=data)
    with pytest.raises(ServiceError, match="another organisation"):
        images.image_share(actor=dennis, image=image, project=ops)
    with pytest.raises(ServiceError, match="belongs to Web already"):
        images.image_share(actor=dennis, image=image, project=web)
    archived = Project.objects.create(organization=acme, name="Old", slug="old", is_archived=True)
    with pytest.raises(ServiceError, match="archived"):
        images.image_share(actor=dennis, image=image, project=archived)
    images.image_unshare(actor=dennis, share=share)
    assert not ImageShare.objects.all_tenants().filter(pk=share.pk).exists()
    assert not image_usable_by_project(image, data.pk)
    assert audit_rows("image.unshare", image).exists()


def test_share_needs_change_rights(connor, sarah, image, data):
    with pytest.raises(PermissionDenied):
        images.image_share(actor=connor, image=image, project=data)
    with pytest.raises(PermissionDenied):
        images.image_share(actor=sarah, image=image, project=data)
    assert not ImageShare.objects.all_tenants().filter(image=image).exists()


@pytest.fixture
def dora(acme, data) -> User:
    """A designer of data only: the images of web are not hers to change."""
    user = User.objects.create_user(username="dora", password="x-not-used-x")
    account_services.membership_create(actor=None, user=user, organization=acme, project=data, role=Role.DESIGNER)
    return User.objects.get(pk=user.pk)


def test_object_grant_lets_one_designer_edit_one_image(sam, dennis, dora, image, web, disk, mallory):
    other = upload(dennis, web, disk("raw"), name="Other")
    with pytest.raises(PermissionDenied):
        images.image_update(actor=dora, image=image, description="mine now")
    images.image_grant_manage(actor=sam, image=image, user=dora)
    assert audit_rows("image.grant_manage", image).get().changes["_"] == {"user": "dora"}
    dora = User.objects.get(pk=dora.pk)  # fresh permission cache
    images.image_update(actor=dora, image=image, description="Hardened by dora")
    image.refresh_from_db()
    assert image.description == "Hardened by dora"
    with pytest.raises(PermissionDenied):
        images.image_update(actor=dora, image=other, description="not this one")
    other.refresh_from_db()
    assert other.description == ""
    # a grantee cannot hand the grant on, and only members of the organisation can get one
    with pytest.raises(PermissionDenied):
        images.image_grant_manage(actor=dora, image=image, user=User.objects.get(username="connor"))
    with pytest.raises(ServiceError, match="not a member"):
        images.image_grant_manage(actor=sam, image=image, user=mallory)
    images.image_revoke_manage(actor=sam, image=image, user=dora)
    dora = User.objects.get(pk=dora.pk)
    with pytest.raises(PermissionDenied):
        images.image_update(actor=dora, image=image, description="again")
    assert audit_rows("image.revoke_manage", image).exists()


def test_live_event_on_approval(sarah, image, live_events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        images.image_approve(actor=sarah, image=image)
    assert any(e["event"] == "image" and e["id"] == image.pk and e["group"] == f"catalog.{image.organization_id}"
               for e in live_events)


# --- selectors -------------------------------------------------------------------------------------------------------
def test_selectors_follow_approval_and_sharing(sarah, dennis, connor, vera, mallory, image, web, data, acme, disk,
                                               django_assert_max_num_queries):
    from apps.catalog import selectors

    other = upload(dennis, web, disk("raw"), name="Other")
    assert [i.pk for i in selectors.approval_queue(sarah, acme.pk)] == [image.pk, other.pk]
    assert list(selectors.approval_queue(dennis, acme.pk)) == []  # designers do not approve
    images.image_approve(actor=sarah, image=image)
    images.image_share(actor=dennis, image=image, project=data)
    assert [i.pk for i in selectors.approval_queue(sarah, acme.pk)] == [other.pk]
    assert [i.pk for i in selectors.images_launchable_in(dennis, data.pk)] == [image.pk]
    assert [i.pk for i in selectors.images_launchable_in(dennis, web.pk)] == [image.pk]
    with django_assert_max_num_queries(2):
        rows = list(selectors.images_for(dennis, organization_id=acme.pk))
        assert {r.pk for r in rows} == {image.pk, other.pk}
        assert all(r.copies_available == 0 and r.project.slug == "web" for r in rows)
    assert [i.pk for i in selectors.images_for(dennis, project_id=data.pk)] == [image.pk]
    assert list(selectors.images_for(mallory)) == []
    assert list(selectors.images_for(connor)) == []  # members launch from the catalog, they do not browse images
    assert selectors.image_detail(sarah, image.pk).pk == image.pk
    with pytest.raises(Image.DoesNotExist):
        selectors.image_detail(mallory, image.pk)
