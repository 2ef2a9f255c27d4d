"""The catalog items API: designers create, edit and publish; consumers see only what is published to their project
and enabled; viewers and outsiders change nothing; price estimates as strings; list query counts that do not grow."""

from __future__ import annotations

import pytest

from apps.catalog.blueprints import blueprint_create
from apps.catalog.models import BlueprintVersion, CatalogItem, CatalogPublication, Image, ImageCopy, ImageShare
from apps.core.models import AuditEvent
from tests.api.conftest import count
from tests.catalog.test_blueprints import EXAMPLE
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile

pytestmark = pytest.mark.django_db

ITEMS = "/api/v1/catalog-items/"


def _error(response) -> dict:
    return response.json()["error"]


def _rows() -> tuple[int, int, int]:
    return count(CatalogItem), count(CatalogPublication), AuditEvent.objects.all_tenants().count()


@pytest.fixture
def world(acme, web):
    account = make_account(acme, "sim-a")
    make_flavor(account, "s1", 1, 2048, price="0.010")
    make_flavor(account, "m2", 2, 4096, price="0.020")
    debian = make_image(web, "Debian", "12")
    ImageCopy.objects.create(organization=acme, image=debian, account=account, region="region-1",
                             state=ImageCopy.State.AVAILABLE, provider_image_id="img-1")
    return {
        "debian": debian,
        "pending": make_image(web, "Ubuntu", "24.04", approval=Image.Approval.PENDING),
        "small": make_profile(acme, "Small", 1, 2048),
        "medium": make_profile(acme, "Medium", 2, 4096),
    }


def _payload(project, world, **extra):
    return {"project": project.pk, "name": "Debian small", "kind": "image", "image": world["debian"].pk,
            "profile": world["small"].pk, "summary": "A small Debian server", **extra}


@pytest.fixture
def item(api, dennis, web, world):
    response = api(dennis).post(ITEMS, _payload(web, world, publish_to=[web.pk]), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_designer_creates_and_publishes(api, dennis, web, world, item):
    assert item["kind"] == "image" and item["image_name"] == "Debian 12" and item["profile_name"] == "Small"
    assert item["image_approved"] is True and item["is_enabled"] is True and item["published_to"] == [web.pk]
    assert item["price_hourly_min"] == "0.01000" and item["price_hourly_max"] == "0.01000"
    assert item["price_monthly_min"] == "7.30" and item["created_by"] == "dennis"


def test_consumer_sees_what_is_published_to_their_project(api, dennis, connor, vera, web, data, world, item):
    hidden = api(dennis).post(ITEMS, _payload(web, world, name="Debian medium", profile=world["medium"].pk),
                              format="json")
    assert hidden.status_code == 201, hidden.content
    listing = api(connor).get(ITEMS).json()
    assert [i["name"] for i in listing["results"]] == ["Debian small"]
    assert listing["results"][0]["published_to"] == []  # the other projects are the managers' business
    assert api(connor).get(f"{ITEMS}{item['id']}/").status_code == 200
    assert api(connor).get(f"{ITEMS}{hidden.json()['id']}/").status_code == 404
    assert api(vera).get(ITEMS).json()["count"] == 1
    assert api(dennis).get(ITEMS).json()["count"] == 2  # designers manage the unpublished ones too
    assert api(connor).get(f"{ITEMS}?project={web.pk}").json()["count"] == 1
    assert api(connor).get(f"{ITEMS}?project={data.pk}").json()["count"] == 0
    assert api(connor).get(f"{ITEMS}?search=small").json()["count"] == 1
    assert api(connor).get(f"{ITEMS}?search=windows").json()["count"] == 0
    assert api(connor).get(f"{ITEMS}?project=abc").status_code == 400


def test_viewers_consumers_and_outsiders_change_nothing(api, connor, vera, mallory, sarah, web, ops, world, item):
    url = f"{ITEMS}{item['id']}/"
    before = _rows()
    for user in (connor, vera, sarah):
        assert api(user).patch(url, {"summary": "x"}, format="json").status_code == 403
        assert api(user).delete(url).status_code == 403
        assert api(user).post(f"{url}disable/").status_code == 403
        assert api(user).post(f"{url}publish/", {"projects": [web.pk]}, format="json").status_code == 403
        assert api(user).post(ITEMS, _payload(web, world, name="Mine"), format="json").status_code == 400
    for suffix, method in (("", "get"), ("", "patch"), ("", "delete"), ("publish/", "post"), ("unpublish/", "post"),
                           ("enable/", "post"), ("disable/", "post")):
        response = getattr(api(mallory), method)(f"{url}{suffix}", {}, format="json")
        assert response.status_code == 404, (suffix, method)
    response = api(mallory).post(ITEMS, _payload(ops, world, name="Stolen"), format="json")
    assert response.status_code == 400 and {"image", "profile"} <= set(_error(response)["fields"])
    assert _rows() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"profile": None}, "profile"),
        ({"kind": "vm"}, "kind"),
        ({"icon": "rocket"}, "icon"),
        ({"colour": "red"}, "colour"),
        ({"project": "<ops>"}, "project"),
        ({"publish_to": ["<ops>"]}, "publish_to"),
        ({"image": 999999}, "image"),
        ({"approval_threshold_monthly": "-1"}, "approval_threshold_monthly"),
        ({"price_hourly_min": "0.00001"}, "price_hourly_min"),
    ],
)
def test_bad_input_is_a_structured_400_and_nothing_is_written(api, dennis, web, ops, world, changes, field):
    payload = _payload(web, world)
    for key, value in changes.items():
        if value == "<ops>":
            value = ops.pk
        elif value == ["<ops>"]:
            value = [ops.pk]
        payload[key] = value
    before = _rows()
    response = api(dennis).post(ITEMS, payload, format="json")
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["code"] == "invalid" and (field in error.get("fields", {}) or field in error["message"]), error
    assert _rows() == before


def test_an_unapproved_image_cannot_be_offered(api, dennis, web, world):
    before = _rows()
    response = api(dennis).post(ITEMS, _payload(web, world, image=world["pending"].pk), format="json")
    assert response.status_code == 400 and "approve" in response.content.decode()
    response = api(dennis).post(ITEMS, data='{"name": ', content_type="application/json")
    assert response.status_code == 400 and _error(response)["code"] == "malformed_request"
    assert _rows() == before


def test_partial_update(api, dennis, world, item):
    url = f"{ITEMS}{item['id']}/"
    response = api(dennis).patch(url, {"summary": "Now smaller", "profile": world["medium"].pk}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["summary"] == "Now smaller" and body["profile_name"] == "Medium"
    assert body["price_hourly_min"] == "0.02000"
    for bad in ({"kind": "blueprint"}, {"slug": "x"}, {"is_enabled": False}, {"project": 1}):
        assert api(dennis).patch(url, bad, format="json").status_code == 400, bad
    assert CatalogItem.objects.all_tenants().get(pk=item["id"]).is_enabled


def test_publish_unpublish_enable_disable_delete(api, dennis, connor, acme, web, data, ops, world, item):
    url = f"{ITEMS}{item['id']}/"
    response = api(dennis).post(f"{url}publish/", {"projects": [data.pk]}, format="json")
    assert response.status_code == 400 and "share it first" in _error(response)["fields"]["projects"][0]
    ImageShare.objects.create(organization=acme, image=world["debian"], project=data)
    response = api(dennis).post(f"{url}publish/", {"projects": [data.pk]}, format="json")
    assert response.status_code == 200 and response.json()["published_to"] == sorted([web.pk, data.pk])
    for payload in ({"projects": [ops.pk]}, {"projects": []}, {"project": data.pk}):
        response = api(dennis).post(f"{url}publish/", payload, format="json")
        assert response.status_code == 400, (payload, response.content)
    assert count(CatalogPublication, item_id=item["id"]) == 2
    response = api(dennis).post(f"{url}unpublish/", {"project": data.pk}, format="json")
    assert response.status_code == 200 and response.json()["published_to"] == [web.pk]
    again = api(dennis).post(f"{url}unpublish/", {"project": data.pk}, format="json")
    assert again.status_code == 400 and "project" in _error(again)["fields"]
    # disabled: gone from the consumers' catalog, still there for its designers
    response = api(dennis).post(f"{url}disable/")
    assert response.status_code == 200 and response.json()["is_enabled"] is False
    assert api(connor).get(url).status_code == 404 and api(connor).get(ITEMS).json()["count"] == 0
    assert api(dennis).post(f"{url}enable/").json()["is_enabled"] is True
    assert api(connor).get(url).status_code == 200
    assert api(dennis).delete(url).status_code == 204
    assert count(CatalogItem, pk=item["id"]) == 0 and count(CatalogPublication, item_id=item["id"]) == 0


def test_a_blueprint_item(api, dennis, connor, acme, web, world):
    world["small"].slug, world["medium"].slug = "small", "medium"
    blueprint = blueprint_create(actor=dennis, project=web, name="Two tier", source=EXAMPLE)
    version = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint, number=1)
    payload = {"project": web.pk, "name": "Two tier app", "kind": "blueprint", "blueprint_version": version.pk,
               "publish_to": [web.pk], "icon": "layers"}
    response = api(dennis).post(ITEMS, payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["blueprint_name"] == "Two tier v1" and body["image"] is None and body["icon"] == "layers"
    assert api(connor).get(f"{ITEMS}{body['id']}/").json()["blueprint_version"] == version.pk
    mixed = api(dennis).post(ITEMS, {**payload, "name": "Mixed", "image": world["debian"].pk}, format="json")
    assert mixed.status_code == 400 and count(CatalogItem) == 1


# --- lists in a fixed number of queries ---------------------------------------------------------------------------
def _grow(acme, web, world, n: int, start: int) -> None:
    for i in range(start, start + n):
        item = CatalogItem.objects.create(organization=acme, project=web, name=f"item {i}", slug=f"item-{i}",
                                          kind="image", image=world["debian"], profile=world["small"])
        CatalogPublication.objects.create(organization=acme, item=item, project=web)


@pytest.mark.parametrize("persona", ["dennis", "connor", "sam"])
def test_list_query_counts_do_not_grow(api, personas, acme, web, world, persona, django_assert_max_num_queries):
    client = api(personas[persona])
    _grow(acme, web, world, 3, 0)
    client.get(ITEMS)
    with django_assert_max_num_queries(12) as small:
        assert client.get(ITEMS).json()["count"] == 3
    _grow(acme, web, world, 9, 3)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert client.get(f"{ITEMS}?project={web.pk}&search=item").json()["count"] == 12


def test_a_read_only_token_reads_the_catalog_and_writes_nothing(dennis, acme, web, world, item):
    from rest_framework.test import APIClient

    from apps.accounts import services

    _, secret = services.token_create(actor=dennis, organization=acme, name="ci", scope="read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    assert client.get(ITEMS).json()["count"] == 1
    before = _rows()
    response = client.post(ITEMS, _payload(web, world, name="Via token"), format="json")
    assert response.status_code == 403 and "read-only" in _error(response)["message"]
    assert client.post(f"{ITEMS}{item['id']}/disable/").status_code == 403
    assert _rows() == before and CatalogItem.objects.all_tenants().get(pk=item["id"]).is_enabled
