"""The hardware profile and blueprint API: CRUD with the right personas, the flavor mapping with prices, immutable
versions, validation answering line-numbered issues, the preview, and list query counts that do not grow."""

from __future__ import annotations

import pytest

from apps.catalog.models import Blueprint, BlueprintVersion, HardwareProfile, ImageCopy
from apps.clouds.models import CloudGrant
from apps.core.models import AuditEvent
from tests.api.conftest import count
from tests.catalog.test_blueprints import EXAMPLE, with_line
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile

pytestmark = pytest.mark.django_db

PROFILES = "/api/v1/hardware-profiles/"
BLUEPRINTS = "/api/v1/blueprints/"


def _error(response) -> dict:
    return response.json()["error"]


def _events() -> int:
    return AuditEvent.objects.all_tenants().count()


# --- hardware profiles ------------------------------------------------------------------------------------------
def test_profile_crud(api, dennis, sarah, connor, vera, mallory, acme):
    payload = {"organization": acme.pk, "name": "Large", "vcpus": 4, "ram_mb": 16384, "description": "big"}
    for user in (sarah, vera, connor, mallory):
        assert api(user).post(PROFILES, payload, format="json").status_code == 400  # the organisation is out of reach
    assert count(HardwareProfile) == 0
    response = api(dennis).post(PROFILES, payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "large" and body["ram_gib"] == "16.0" and body["created_by"] == "dennis"
    url = f"{PROFILES}{body['id']}/"
    assert api(sarah).get(url).status_code == 200
    assert api(connor).get(url).status_code == 404 and api(mallory).get(url).status_code == 404
    assert api(sarah).patch(url, {"vcpus": 8}, format="json").status_code == 403
    assert api(mallory).patch(url, {"vcpus": 8}, format="json").status_code == 404
    response = api(dennis).patch(url, {"vcpus": 8, "name": "Larger"}, format="json")
    assert response.status_code == 200 and response.json()["vcpus"] == 8 and response.json()["name"] == "Larger"
    assert response.json()["slug"] == "large"  # blueprints refer to the slug: a rename keeps it
    for bad in ({"vcpus": 0}, {"ram_mb": 1}, {"organization": acme.pk}, {"slug": "x"}, {"colour": "red"}):
        response = api(dennis).patch(url, bad, format="json")
        assert response.status_code == 400, (bad, response.content)
    assert HardwareProfile.objects.all_tenants().get(pk=body["id"]).vcpus == 8
    assert api(mallory).delete(url).status_code == 404
    assert api(dennis).delete(url).status_code == 204
    assert count(HardwareProfile) == 0


def test_profile_bad_input_writes_nothing(api, dennis, acme, globex):
    events = _events()
    for payload in (
        {"organization": globex.pk, "name": "X", "vcpus": 1, "ram_mb": 1024},
        {"organization": acme.pk, "name": "X", "vcpus": "many", "ram_mb": 1024},
        {"organization": acme.pk, "name": "X", "vcpus": 1},
        {"organization": acme.pk, "name": "X", "vcpus": 1, "ram_mb": 1024, "price": 3},
    ):
        response = api(dennis).post(PROFILES, payload, format="json")
        assert response.status_code == 400 and _error(response)["code"] == "invalid", response.content
    response = api(dennis).post(PROFILES, data="{", content_type="application/json")
    assert response.status_code == 400 and _error(response)["code"] == "malformed_request"
    assert count(HardwareProfile) == 0 and _events() == events


def test_profile_mapping_gives_the_best_flavor_and_its_price(api, dennis, connor, acme, web, globex):
    account = make_account(acme, "sim-a", regions=["region-1", "region-2"])
    make_flavor(account, "s1", 1, 2048, price="0.010")
    make_flavor(account, "m2", 2, 4096, price="0.020")
    profile = make_profile(acme, "Small", 1, 2048)
    response = api(dennis).get(f"{PROFILES}{profile.pk}/mapping/")
    assert response.status_code == 200, response.content
    fits = {f["region"]: f for f in response.json()}
    assert fits["region-1"]["flavor_name"] == "s1" and fits["region-1"]["price_per_hour"] == "0.01000"
    assert fits["region-1"]["price_per_month"] == "7.30" and fits["region-1"]["account_name"] == "sim-a"
    assert fits["region-2"]["flavor"] is None and fits["region-2"]["reason"]
    assert "credentials" not in response.content.decode() and "test-key" not in response.content.decode()
    # only the project's granted clouds: none yet
    ungranted = api(dennis).get(f"{PROFILES}{profile.pk}/mapping/?project={web.pk}").json()
    assert not [f for f in ungranted if f["flavor"] is not None]
    CloudGrant.objects.create(organization=acme, account=account, project=web, regions=["region-1"])
    granted = api(dennis).get(f"{PROFILES}{profile.pk}/mapping/?project={web.pk}").json()
    assert [(f["region"], f["flavor_name"]) for f in granted if f["flavor"]] == [("region-1", "s1")]
    bad = api(dennis).get(f"{PROFILES}{profile.pk}/mapping/?arch=sparc")
    assert bad.status_code == 400 and "arch" in _error(bad)["fields"]
    other = make_profile(globex, "Globex small", 1, 2048)
    assert api(dennis).get(f"{PROFILES}{other.pk}/mapping/").status_code == 404
    assert api(connor).get(f"{PROFILES}{profile.pk}/mapping/").status_code == 404


# --- blueprints -------------------------------------------------------------------------------------------------
@pytest.fixture
def catalog(acme, web):
    return {
        "debian": make_image(web, "Debian", "12"),
        "small": make_profile(acme, "Small", 1, 2048),
        "medium": make_profile(acme, "Medium", 2, 4096),
    }


def _create(api, user, project, **extra):
    payload = {"project": project.pk, "name": "Two tier", "description": "web + db", "source": EXAMPLE, **extra}
    return api(user).post(BLUEPRINTS, payload, format="json")


def test_blueprint_create_read_update(api, dennis, sarah, connor, vera, mallory, web, catalog):
    for user in (sarah, vera, connor, mallory):
        assert _create(api, user, web).status_code == 400  # not a project they may design in
    assert count(Blueprint) == 0
    response = _create(api, dennis, web, note="first")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["latest_version"] == 1 and body["slug"] == "two-tier" and "source" not in body
    url = f"{BLUEPRINTS}{body['id']}/"
    assert api(sarah).get(url).status_code == 200
    assert api(connor).get(url).status_code == 404 and api(mallory).get(url).status_code == 404
    assert api(sarah).patch(url, {"name": "Renamed"}, format="json").status_code == 403
    response = api(dennis).patch(url, {"name": "Three tier", "description": "more"}, format="json")
    assert response.status_code == 200 and response.json()["name"] == "Three tier"
    for bad in ({"latest_version": 9}, {"project": web.pk}, {"source": EXAMPLE}):
        assert api(dennis).patch(url, bad, format="json").status_code == 400, bad
    assert api(dennis).delete(url).status_code == 405
    assert count(Blueprint) == 1


def test_an_invalid_source_is_a_400_with_line_numbers_and_stores_nothing(api, dennis, web, catalog):
    events = _events()
    response = _create(api, dennis, web, source=with_line(EXAMPLE, 21, "    count: 0"))
    assert response.status_code == 400, response.content
    messages = _error(response)["fields"]["source"]
    assert any(m.startswith("line 21") and "count must be at least 1" in m for m in messages), messages
    assert count(Blueprint) == 0 and count(BlueprintVersion) == 0 and _events() == events


def test_versions_are_listed_saved_and_never_changed(api, dennis, sarah, mallory, web, catalog):
    blueprint = _create(api, dennis, web).json()
    base = f"{BLUEPRINTS}{blueprint['id']}/versions/"
    source2 = EXAMPLE.replace("count: 1", "count: 2")
    assert api(sarah).post(base, {"source": source2}, format="json").status_code == 403
    assert api(mallory).get(base).status_code == 404
    broken = api(dennis).post(base, {"source": with_line(EXAMPLE, 19, "    imgae: x")}, format="json")
    assert broken.status_code == 400 and any("line 19" in m for m in _error(broken)["fields"]["source"])
    response = api(dennis).post(base, {"source": source2, "note": "two dbs"}, format="json")
    assert response.status_code == 201, response.content
    v2 = response.json()
    assert v2["number"] == 2 and v2["note"] == "two dbs" and v2["spec"]["servers"]["db"]["count"] == 2
    listed = api(sarah).get(base).json()
    assert [v["number"] for v in listed] == [2, 1]
    v1 = listed[1]
    url = f"/api/v1/blueprint-versions/{v1['id']}/"
    assert api(sarah).get(url).json()["source"] == EXAMPLE
    # read-only: no method changes a version
    assert api(dennis).patch(url, {"note": "x"}, format="json").status_code == 405
    assert api(dennis).delete(url).status_code == 405
    assert api(dennis).get(f"/api/v1/blueprint-versions/?blueprint={blueprint['id']}").json()["count"] == 2
    assert api(mallory).get(url).status_code == 404


def test_validate_always_answers_the_issues(api, dennis, sam, mallory, web, catalog):
    url = f"{BLUEPRINTS}validate/"
    ok = api(dennis).post(url, {"source": EXAMPLE}, format="json")
    assert ok.status_code == 200 and ok.json() == {"valid": True, "issues": []}
    bad = api(dennis).post(url, {"source": with_line(EXAMPLE, 21, "    count: 0")}, format="json")
    assert bad.status_code == 200
    body = bad.json()
    assert body["valid"] is False
    issue = next(i for i in body["issues"] if "count must be at least 1" in i["message"])
    assert issue["line"] == 21 and isinstance(issue["column"], int) and issue["path"] == "servers.db.count"
    syntax = api(dennis).post(url, {"source": "servers: [\n  - a\n b: c"}, format="json").json()
    assert syntax["valid"] is False and syntax["issues"][0]["line"] is not None
    # names resolve in the organisation asked about: Acme's images are unknown to Globex
    globex_view = api(mallory).post(url, {"source": EXAMPLE}, format="json")
    assert globex_view.status_code == 200 and globex_view.json()["valid"] is False
    assert api(sam).post(url, {"source": EXAMPLE, "project": web.pk}, format="json").json()["valid"] is True
    assert api(dennis).post(url, {"source": EXAMPLE, "extra": 1}, format="json").status_code == 400
    assert api(dennis).post(url, {}, format="json").status_code == 400
    assert count(Blueprint) == 0


def test_validate_without_images_view_is_refused(api, connor):
    response = api(connor).post(f"{BLUEPRINTS}validate/", {"source": EXAMPLE}, format="json")
    assert response.status_code == 403


def test_preview_of_a_source_and_of_a_saved_version(api, dennis, mallory, acme, web, ops, catalog):
    account = make_account(acme, "sim-a")
    make_flavor(account, "s1", 1, 2048, price="0.010")
    make_flavor(account, "m2", 2, 4096, price="0.020")
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    ImageCopy.objects.create(organization=acme, image=catalog["debian"], account=account, region="region-1",
                             state=ImageCopy.State.AVAILABLE, provider_image_id="img-1")
    url = f"{BLUEPRINTS}preview/"
    response = api(dennis).post(url, {"source": EXAMPLE, "project": web.pk, "parameters": {"web_count": 3}},
                                format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [i["name"] for i in body["instances"]] == ["db-1", "web-1", "web-2", "web-3"]
    assert body["valid"] is True and body["problems"] == []
    assert body["price_hourly"] == "0.05000" and body["price_monthly"] == "36.50"
    web1 = body["instances"][1]
    assert web1["account_name"] == "sim-a" and web1["flavor_name"] == "s1" and web1["image_name"] == "Debian 12"
    assert "user_data" not in web1
    version = BlueprintVersion.objects.all_tenants().get(
        blueprint_id=_create(api, dennis, web).json()["id"], number=1
    )
    saved = api(dennis).post(url, {"version": version.pk, "project": web.pk}, format="json").json()
    assert [i["name"] for i in saved["instances"]] == ["db-1", "web-1", "web-2"]
    for payload, field in (
        ({"project": web.pk}, "version"),
        ({"version": version.pk, "source": EXAMPLE, "project": web.pk}, "version"),
        ({"source": with_line(EXAMPLE, 21, "    count: 0"), "project": web.pk}, "source"),
        ({"source": EXAMPLE, "project": ops.pk}, "project"),
    ):
        response = api(dennis).post(url, payload, format="json")
        assert response.status_code == 400 and field in _error(response)["fields"], (payload, response.content)
    response = api(mallory).post(url, {"version": version.pk, "project": ops.pk}, format="json")
    assert response.status_code == 400 and "version" in _error(response)["fields"]


# --- lists in a fixed number of queries ---------------------------------------------------------------------------
def _grow(acme, web, dennis, n: int, start: int) -> None:
    for i in range(start, start + n):
        make_profile(acme, f"p{i}", 1, 1024, created_by=dennis)
        blueprint = Blueprint.objects.create(organization=acme, project=web, name=f"b{i}", slug=f"b{i}",
                                             latest_version=1, created_by=dennis)
        BlueprintVersion.objects.create(organization=acme, blueprint=blueprint, number=1, source="x", spec={},
                                        created_by=dennis)


@pytest.mark.parametrize("path", ["hardware-profiles", "blueprints", "blueprint-versions"])
def test_list_query_counts_do_not_grow(api, dennis, acme, web, path, django_assert_max_num_queries):
    client = api(dennis)
    _grow(acme, web, dennis, 3, 0)
    client.get(f"/api/v1/{path}/")
    with django_assert_max_num_queries(12) as small:
        assert client.get(f"/api/v1/{path}/").json()["count"] == 3
    _grow(acme, web, dennis, 9, 3)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert client.get(f"/api/v1/{path}/").json()["count"] == 12
