"""Edit and delete actions of the catalog pages: image details, deleting images, hardware profiles and catalog items,
renaming blueprints. Who may do what (403 for people who see the row, 404 for those who do not), and refusals of the
services shown on the page with nothing written."""

from __future__ import annotations

import pytest
from django.db.models import ProtectedError

from apps.catalog.blueprints import blueprint_create
from apps.catalog.models import Blueprint, CatalogItem, CatalogPublication, HardwareProfile, Image, ImageCopy
from apps.core.models import AuditEvent
from tests.catalog.pages_world import build_world, grow_images
from tests.catalog.test_blueprints import EXAMPLE

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(acme, web, dennis):
    return build_world(acme, web, dennis)


def text(response) -> str:
    return response.content.decode()


def audit_count() -> int:
    return AuditEvent.objects.all_tenants().count()


def verbs_since(count: int) -> list[str]:
    return list(AuditEvent.objects.all_tenants().order_by("pk").values_list("verb", flat=True)[count:])


IMAGE_EDIT = {"name": "Debian", "version": "12.5", "os": "Debian GNU/Linux", "os_version": "12", "arch": "arm64",
              "min_disk_gb": 20, "min_ram_mb": 1024, "description": "The point release"}


# --- image details ---------------------------------------------------------------------------------------------------
def test_detail_offers_edit_and_delete_to_people_who_may_change_the_image(client, personas, world):
    image = world["debian"]
    client.force_login(personas["dennis"])
    page = text(client.get(f"/catalog/images/{image.pk}/"))
    assert f'href="/catalog/images/{image.pk}/edit/"' in page
    delete = f'action="/catalog/images/{image.pk}/delete/" data-confirm="Delete Debian 12 and its copies on the clouds?'
    assert delete in page
    assert 'name="delete_copies" value="1"' in page and "Delete it from Skyport only" in page
    # the security admin sees the image (to approve it) but does not change it
    client.force_login(personas["sarah"])
    page = text(client.get(f"/catalog/images/{image.pk}/"))
    assert "Debian" in page and f"/catalog/images/{image.pk}/edit/" not in page and "/delete/" not in page


@pytest.mark.parametrize("persona", ["dennis", "sam"])
def test_edit_image_details(client, personas, world, persona):
    image = world["debian"]
    client.force_login(personas[persona])
    page = text(client.get(f"/catalog/images/{image.pk}/edit/"))
    assert 'value="Debian"' in page and 'value="12"' in page and '<option value="x86_64" selected>' in page
    count = audit_count()
    response = client.post(f"/catalog/images/{image.pk}/edit/", IMAGE_EDIT)
    assert response.status_code == 302 and response["Location"] == f"/catalog/images/{image.pk}/"
    image.refresh_from_db()
    assert (image.version, image.os, image.arch, image.min_disk_gb, image.min_ram_mb, image.description) == (
        "12.5", "Debian GNU/Linux", "arm64", 20, 1024, "The point release")
    assert image.checksum_sha256 == "ab" * 32  # the file's facts never change
    assert verbs_since(count) == ["image.update"]
    assert "Debian 12.5 is saved." in text(client.get(response["Location"]))


def test_edit_image_refusals_keep_the_input_and_write_nothing(client, dennis, world):
    image, other = world["debian"], world["pending"]
    client.force_login(dennis)
    count = audit_count()
    # the organisation already has Ubuntu 24.04: the service refuses, shown on the name field
    taken = client.post(f"/catalog/images/{image.pk}/edit/", {**IMAGE_EDIT, "name": other.name,
                                                               "version": other.version})
    assert taken.status_code == 400
    page = text(taken)
    assert 'id="id_name_error"' in page and "already has an image Ubuntu 24.04" in page
    assert 'value="Debian GNU/Linux"' in page  # what was typed stays
    bad = client.post(f"/catalog/images/{image.pk}/edit/", {**IMAGE_EDIT, "name": "", "min_disk_gb": -1})
    assert bad.status_code == 400 and 'id="id_name_error"' in text(bad) and 'id="id_min_disk_gb_error"' in text(bad)
    image.refresh_from_db()
    assert (image.name, image.version, image.arch, image.min_disk_gb) == ("Debian", "12", "x86_64", 0)
    assert audit_count() == count


# --- deleting images -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", ["dennis", "sam"])
def test_delete_an_image(client, personas, world, persona):
    image = world["pending"]
    client.force_login(personas[persona])
    count = audit_count()
    response = client.post(f"/catalog/images/{image.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/catalog/images/"
    assert not Image.objects.all_tenants().filter(pk=image.pk).exists()
    assert verbs_since(count) == ["image.delete"]
    page = text(client.get("/catalog/images/"))
    assert "Ubuntu 24.04 is deleted." in page and "stay there" not in page


def test_deleting_an_image_on_clouds_says_the_copies_stay(client, dennis, acme, web, world):
    grow_images(acme, web, world["account"], 1)
    image = Image.objects.all_tenants().get(name="Image 0")
    client.force_login(dennis)
    response = client.post(f"/catalog/images/{image.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/catalog/images/", 302)]
    assert "Image 0 1 is deleted. Its copies on the clouds stay there" in text(response)
    assert not ImageCopy.objects.all_tenants().filter(image_id=image.pk).exists()


def test_an_image_catalog_items_use_is_not_deleted(client, dennis, world):
    image = world["debian"]
    client.force_login(dennis)
    count, copies = audit_count(), ImageCopy.objects.all_tenants().filter(image=image).count()
    response = client.post(f"/catalog/images/{image.pk}/delete/", follow=True)
    assert response.redirect_chain == [(f"/catalog/images/{image.pk}/", 302)]
    page = text(response)
    assert 'role="alert"' in page and "Debian 12 is not deleted: Catalog items use this image" in page
    assert "Debian medium, Debian small, Old Debian" in page
    assert Image.objects.all_tenants().filter(pk=image.pk).exists()
    assert ImageCopy.objects.all_tenants().filter(image=image).count() == copies == 2
    assert audit_count() == count


def test_an_image_being_pushed_is_not_deleted(client, dennis, world):
    image = world["pending"]
    ImageCopy.objects.create(organization_id=image.organization_id, image=image, account=world["account"],
                             region="region-1", state=ImageCopy.State.UPLOADING)
    client.force_login(dennis)
    count = audit_count()
    page = text(client.post(f"/catalog/images/{image.pk}/delete/", follow=True))
    assert "Copies of this image are being pushed" in page
    assert Image.objects.all_tenants().filter(pk=image.pk).exists() and audit_count() == count


def test_who_may_edit_and_delete_an_image(client, personas, world):
    image = world["pending"]
    expect = {"sarah": 403, "marty": 403, "connor": 404, "vera": 404, "mallory": 404}
    count = audit_count()
    for name, code in expect.items():
        client.force_login(personas[name])
        got = (client.get(f"/catalog/images/{image.pk}/edit/").status_code,
               client.post(f"/catalog/images/{image.pk}/edit/", {**IMAGE_EDIT, "name": "Hacked"}).status_code,
               client.post(f"/catalog/images/{image.pk}/delete/").status_code)
        assert got == (code, code, code), name
    image.refresh_from_db()
    assert image.name == "Ubuntu" and audit_count() == count
    client.force_login(personas["dennis"])
    assert client.get(f"/catalog/images/{image.pk}/delete/").status_code == 405


# --- hardware profiles -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", ["dennis", "sam"])
def test_delete_a_profile(client, personas, world, persona):
    profile = world["huge"]
    client.force_login(personas[persona])
    page = text(client.get(f"/catalog/profiles/{profile.pk}/edit/"))
    assert f'action="/catalog/profiles/{profile.pk}/delete/" data-confirm="Delete the hardware profile Huge?"' in page
    count = audit_count()
    response = client.post(f"/catalog/profiles/{profile.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/catalog/profiles/", 302)]
    assert "Hardware profile Huge is deleted." in text(response)
    assert not HardwareProfile.objects.all_tenants().filter(pk=profile.pk).exists()
    assert verbs_since(count) == ["hardware_profile.delete"]


def test_a_profile_in_use_is_not_deleted(client, dennis, world):
    profile = world["small"]
    client.force_login(dennis)
    count = audit_count()
    response = client.post(f"/catalog/profiles/{profile.pk}/delete/", follow=True)
    assert response.redirect_chain == [(f"/catalog/profiles/{profile.pk}/edit/", 302)]
    page = text(response)
    assert 'role="alert"' in page and "Hardware profile Small is not deleted" in page
    assert "used by catalog items (Debian small, Old Debian)" in page
    assert HardwareProfile.objects.all_tenants().filter(pk=profile.pk).exists() and audit_count() == count


def test_a_profile_a_blueprint_item_launches_is_not_deleted(client, dennis, world):
    # the Two tier blueprint's servers use the Small and Medium profiles; publish it as an item
    from apps.catalog.catalog import catalog_item_create

    medium = world["medium"]
    for item in CatalogItem.objects.all_tenants().filter(profile=medium):
        item.delete()
    catalog_item_create(actor=dennis, project=world["v2"].blueprint.project, name="Two tier app", kind="blueprint",
                        blueprint_version=world["v2"], publish_to=[])
    client.force_login(dennis)
    count = audit_count()
    page = text(client.post(f"/catalog/profiles/{medium.pk}/delete/", follow=True))
    assert "Hardware profile Medium is not deleted" in page and "Two tier app" in page
    assert HardwareProfile.objects.all_tenants().filter(pk=medium.pk).exists() and audit_count() == count


def test_who_may_delete_a_profile(client, personas, world):
    profile = world["huge"]
    expect = {"sarah": 403, "marty": 403, "connor": 404, "vera": 404, "mallory": 404}
    for name, code in expect.items():
        client.force_login(personas[name])
        assert client.post(f"/catalog/profiles/{profile.pk}/delete/").status_code == code, name
    assert HardwareProfile.objects.all_tenants().filter(pk=profile.pk).exists()


# --- catalog items ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", ["dennis", "sam"])
def test_delete_a_catalog_item(client, personas, world, persona):
    item = world["for_web"]
    client.force_login(personas[persona])
    page = text(client.get(f"/catalog/manage/{item.pk}/edit/"))
    assert f'action="/catalog/manage/{item.pk}/delete/" data-confirm="Delete Debian small from the catalog?"' in page
    count = audit_count()
    response = client.post(f"/catalog/manage/{item.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/catalog/manage/", 302)]
    assert "Debian small is deleted from the catalog." in text(response)
    assert not CatalogItem.objects.all_tenants().filter(pk=item.pk).exists()
    assert not CatalogPublication.objects.all_tenants().filter(item_id=item.pk).exists()
    assert verbs_since(count) == ["catalog_item.delete"]


def test_a_refused_item_delete_writes_nothing(client, dennis, world, monkeypatch):
    """An item rows elsewhere still point at (a launched one) is refused, its audit event rolled back with it."""
    item = world["for_web"]

    def protected(self, *args, **kwargs):
        raise ProtectedError("launched", set())

    monkeypatch.setattr(CatalogItem, "delete", protected)
    client.force_login(dennis)
    count = audit_count()
    response = client.post(f"/catalog/manage/{item.pk}/delete/", follow=True)
    assert response.redirect_chain == [(f"/catalog/manage/{item.pk}/edit/", 302)]
    page = text(response)
    assert 'role="alert"' in page and "Debian small is not deleted" in page and "disable it instead" in page
    assert CatalogItem.objects.all_tenants().filter(pk=item.pk).exists() and audit_count() == count


def test_who_may_delete_a_catalog_item(client, personas, world):
    item = world["for_web"]
    # publishing is the designers' and admins': nobody else even sees the managed item
    expect = {"sarah": 404, "marty": 404, "connor": 404, "vera": 404, "mallory": 404}
    count = audit_count()
    for name, code in expect.items():
        client.force_login(personas[name])
        assert client.post(f"/catalog/manage/{item.pk}/delete/").status_code == code, name
    assert CatalogItem.objects.all_tenants().filter(pk=item.pk).exists() and audit_count() == count


# --- blueprints ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("persona", ["dennis", "sam"])
def test_rename_a_blueprint(client, personas, world, persona):
    blueprint = world["blueprint"]
    client.force_login(personas[persona])
    page = text(client.get(f"/catalog/blueprints/{blueprint.pk}/"))
    assert f'action="/catalog/blueprints/{blueprint.pk}/rename/"' in page and 'value="Two tier"' in page
    count = audit_count()
    response = client.post(f"/catalog/blueprints/{blueprint.pk}/rename/",
                           {"name": "Web and database", "description": "Two web servers and a database"})
    assert response.status_code == 302 and response["Location"] == f"/catalog/blueprints/{blueprint.pk}/"
    blueprint.refresh_from_db()
    assert (blueprint.name, blueprint.description) == ("Web and database", "Two web servers and a database")
    assert blueprint.latest_version == 2  # a rename is no new version
    assert verbs_since(count) == ["blueprint.update"]
    page = text(client.get(response["Location"]))
    assert "Blueprint Web and database is saved." in page and "Two web servers and a database" in page


def test_rename_refusals_show_on_the_form_and_write_nothing(client, dennis, web, world):
    blueprint = world["blueprint"]
    blueprint_create(actor=dennis, project=web, name="Other", source=EXAMPLE)
    client.force_login(dennis)
    count = audit_count()
    taken = client.post(f"/catalog/blueprints/{blueprint.pk}/rename/", {"name": "other", "description": "x"})
    assert taken.status_code == 400
    page = text(taken)
    assert 'id="id_name_error"' in page and "already has a blueprint with this name" in page
    assert 'value="other"' in page and 'id="rename-form"' in page
    assert "max: 12" in page  # the editor still shows the latest source
    empty = client.post(f"/catalog/blueprints/{blueprint.pk}/rename/", {"name": "  ", "description": ""})
    assert empty.status_code == 400 and 'id="id_name_error"' in text(empty)
    blueprint.refresh_from_db()
    assert (blueprint.name, blueprint.description) == ("Two tier", "") and audit_count() == count


def test_who_may_rename_a_blueprint(client, personas, world):
    blueprint = world["blueprint"]
    client.force_login(personas["sarah"])
    page = text(client.get(f"/catalog/blueprints/{blueprint.pk}/"))
    assert "Two tier" in page and "/rename/" not in page
    expect = {"sarah": 403, "marty": 403, "connor": 404, "vera": 404, "mallory": 404}
    count = audit_count()
    for name, code in expect.items():
        client.force_login(personas[name])
        response = client.post(f"/catalog/blueprints/{blueprint.pk}/rename/", {"name": "Hacked", "description": ""})
        assert response.status_code == code, name
    assert Blueprint.objects.all_tenants().get(pk=blueprint.pk).name == "Two tier" and audit_count() == count
