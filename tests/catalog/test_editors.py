"""Per-object edit grants (django-guardian) through the API and the pages: a designer of another project allowed to
edit one image or one blueprint, handed out and taken back by those whose role allows it, audited, and void once
the holder leaves the organisation."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts import services as account_services
from apps.accounts.models import Membership, User
from apps.catalog.models import Blueprint
from apps.catalog.permissions import can_change, editors_of
from apps.core.models import AuditEvent
from tests.catalog.test_profiles import make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def dora(acme, data):
    """A designer of `data` only."""
    user = User.objects.create_user("dora", email="dora@acme.example", password="skyport-demo", first_name="Dora")
    Membership.objects.create(user=user, organization=acme, project=data, role="designer")
    return user


@pytest.fixture
def images(web):
    return make_image(web, "Owned by web", "1"), make_image(web, "Other", "1")


def _grants():
    return AuditEvent.objects.all_tenants().filter(verb__in=["image.grant_manage", "image.revoke_manage"]).count()


def test_image_editor_granted_edits_that_image_only_and_cannot_pass_it_on(api, sam, dora, mallory, images):
    image, other = images
    url = f"/api/v1/images/{image.pk}/"
    assert api(dora).patch(url, {"description": "mine now"}, format="json").status_code == 403
    response = api(sam).post(url + "editors/", {"user": dora.pk}, format="json")
    assert response.status_code == 201, response.content
    assert response.json() == {"id": dora.pk, "username": "dora", "name": "Dora"}
    assert [u["username"] for u in api(sam).get(url + "editors/").json()] == ["dora"]
    assert _grants() == 1

    assert api(dora).patch(url, {"description": "edited by dora"}, format="json").status_code == 200
    other_url = f"/api/v1/images/{other.pk}/"
    assert api(dora).patch(other_url, {"description": "x"}, format="json").status_code == 403
    # a grant holder cannot hand the grant on
    assert api(dora).post(url + "editors/", {"user": sam.pk}, format="json").status_code == 403
    assert [u.username for u in editors_of(image)] == ["dora"]
    # outsiders: the row is invisible; a user of another organisation cannot be granted
    assert api(mallory).post(url + "editors/", {"user": mallory.pk}, format="json").status_code == 404
    response = api(sam).post(url + "editors/", {"user": mallory.pk}, format="json")
    assert response.status_code == 400 and "member" in response.json()["error"]["fields"]["user"][0]
    for bad in ({"user": "dora"}, {"user": 10**12}, {}, {"user": dora.pk, "extra": 1}):
        assert api(sam).post(url + "editors/", bad, format="json").status_code == 400
    assert [u.username for u in editors_of(image)] == ["dora"] and _grants() == 1

    assert api(sam).post(url + "remove-editor/", {"user": dora.pk}, format="json").status_code == 204
    assert editors_of(image) == [] and _grants() == 2
    assert api(dora).patch(url, {"description": "again"}, format="json").status_code == 403
    assert api(sam).post(url + "remove-editor/", {"user": dora.pk}, format="json").status_code == 400


def test_a_grant_ends_with_the_membership(api, sam, dora, acme, images):
    image, _ = images
    assert api(sam).post(f"/api/v1/images/{image.pk}/editors/", {"user": dora.pk}, format="json").status_code == 201
    assert can_change(dora, image)
    membership = Membership.objects.all_tenants().get(user=dora)
    account_services.membership_remove(actor=sam, membership=membership)
    dora = User.objects.get(pk=dora.pk)
    assert not can_change(dora, image) and editors_of(image) == []
    # joining again later does not bring the grant back
    Membership.objects.create(user=dora, organization=acme, project=membership.project, role="designer")
    dora = User.objects.get(pk=dora.pk)
    assert not can_change(dora, image) and editors_of(image) == []


def test_blueprint_editors(api, dennis, dora, web):
    blueprint = Blueprint.objects.create(organization=web.organization, project=web, name="BP", slug="bp")
    url = f"/api/v1/blueprints/{blueprint.pk}/"
    assert api(dora).patch(url, {"description": "x"}, format="json").status_code == 403
    assert api(dennis).post(url + "editors/", {"user": dora.pk}, format="json").status_code == 201
    assert api(dora).patch(url, {"description": "dora's"}, format="json").status_code == 200
    assert AuditEvent.objects.all_tenants().filter(verb="blueprint.grant_manage").count() == 1
    assert api(dennis).post(url + "remove-editor/", {"user": dora.pk}, format="json").status_code == 204
    assert api(dora).patch(url, {"description": "no"}, format="json").status_code == 403


def test_image_page_lists_and_changes_editors(client, sam, dora, mallory, images):
    image, _ = images
    client.force_login(sam)
    add = reverse("catalog:image-editors", kwargs={"pk": image.pk})
    assert client.post(add, {"user": dora.pk}).status_code == 302
    page = client.get(reverse("catalog:image-detail", kwargs={"pk": image.pk})).content.decode()
    assert "Who else may edit" in page and "Dora" in page
    # a user of another organisation is refused with a message, nothing granted
    response = client.post(add, {"user": mallory.pk}, follow=True)
    assert "Choose an active member of this organisation." in response.content.decode()
    assert [u.username for u in editors_of(image)] == ["dora"]
    remove = reverse("catalog:image-editor-remove", kwargs={"pk": image.pk})
    assert client.post(remove, {"user": dora.pk}).status_code == 302
    assert editors_of(image) == []
    client.force_login(mallory)
    assert client.post(add, {"user": mallory.pk}).status_code == 404
