"""Deleting an image: the copies Skyport pushed are deleted at the providers too (as operations, after the commit),
unless the designer keeps them; an adopted provider image is never deleted at the provider."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.catalog import images
from apps.catalog.models import Image, ImageCopy
from apps.clouds import services as cloud_services
from apps.clouds.models import CloudImage, Operation
from apps.clouds.sim.services import sim_call_count, sim_cloud
from apps.core.models import AuditEvent
from tests.catalog.conftest import connect, needs_qemu, upload
from tests.clouds.accounts_world import DBS

pytestmark = [pytest.mark.django_db(databases=DBS), needs_qemu]


@pytest.fixture
def pushed(sam, dennis, acme, web, disk, django_capture_on_commit_callbacks):
    east, west = connect(sam, acme, "del-east"), connect(sam, acme, "del-west")
    for account in (east, west):
        cloud_services.grant_create(actor=sam, account=account, project=web)
    image = upload(dennis, web, disk("qcow2", "16M"))
    with django_capture_on_commit_callbacks(execute=True):
        copies = images.image_push(actor=dennis, image=image, targets=[(east, "region-1"), (west, "region-1")])
    for copy in copies:
        copy.refresh_from_db()
        assert copy.state == ImageCopy.State.AVAILABLE
    return image, copies


def provider_ids(account) -> set[str]:
    return {i["id"] for i in sim_cloud(account.endpoint).images}


def test_delete_removes_the_copies_at_every_provider(dennis, pushed, django_capture_on_commit_callbacks):
    image, copies = pushed
    before = {c.account.pk: provider_ids(c.account) for c in copies}
    with django_capture_on_commit_callbacks(execute=True):
        operations = images.image_delete(actor=dennis, image=image)
    assert not Image.objects.all_tenants().filter(pk=image.pk).exists()
    assert len(operations) == 2
    for copy in copies:
        op = Operation.objects.all_tenants().get(account=copy.account, kind="delete_image")
        assert op.state == Operation.State.SUCCEEDED and op.params == {"image_id": copy.provider_image_id}
        assert provider_ids(copy.account) == before[copy.account.pk] - {copy.provider_image_id}
    event = AuditEvent.objects.all_tenants().get(verb="image.delete", object_id=str(image.pk))
    assert sorted(event.changes["_"]["provider_copies_deleted"]) == ["del-east/region-1", "del-west/region-1"]


def test_api_keep_copies_leaves_them_at_the_providers(api, dennis, pushed, django_capture_on_commit_callbacks):
    image, copies = pushed
    before = {c.account.pk: provider_ids(c.account) for c in copies}
    calls = {c.account.pk: sim_call_count(c.account.endpoint, "delete_image") for c in copies}
    with django_capture_on_commit_callbacks(execute=True):
        response = api(dennis).delete(f"/api/v1/images/{image.pk}/?keep_copies=true")
    assert response.status_code == 204
    assert not Operation.objects.all_tenants().filter(kind="delete_image").exists()
    for copy in copies:
        assert provider_ids(copy.account) == before[copy.account.pk]
        assert sim_call_count(copy.account.endpoint, "delete_image") == calls[copy.account.pk]


def test_page_deletes_copies_only_when_asked(client, dennis, pushed, django_capture_on_commit_callbacks):
    image, copies = pushed
    client.force_login(dennis)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("catalog:image-delete", kwargs={"pk": image.pk}), {"delete_copies": "1"},
                               follow=True)
    assert "2 cloud copies are being deleted" in response.content.decode()
    for copy in copies:
        assert copy.provider_image_id not in provider_ids(copy.account)


def test_an_adopted_provider_image_is_never_deleted_at_the_provider(sam, dennis, acme, web,
                                                                    django_capture_on_commit_callbacks):
    account = connect(sam, acme, "adopt")
    cloud_services.grant_create(actor=sam, account=account, project=web)
    cloud_services.sync_account(account=account)
    cloud_image = CloudImage.objects.all_tenants().filter(account=account).first()
    image = images.image_import_provider(actor=dennis, project=web, cloud_image=cloud_image, name="Adopted")
    assert ImageCopy.objects.all_tenants().filter(image=image, state=ImageCopy.State.AVAILABLE).count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert images.image_delete(actor=dennis, image=image) == []
    assert cloud_image.provider_id in provider_ids(account)
    assert not Operation.objects.all_tenants().filter(kind="delete_image").exists()
