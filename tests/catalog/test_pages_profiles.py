"""Hardware profile pages: the mapping per cloud with its "no fit" flags, create and edit with the service's
refusals shown on the form; who may do what; a constant number of queries."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.models import HardwareProfile
from tests.catalog.pages_world import build_world
from tests.catalog.test_profiles import make_flavor, make_profile

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(acme, web, dennis):
    return build_world(acme, web, dennis)


def text(response) -> str:
    return response.content.decode()


def test_list_shows_the_flavor_and_price_per_account_region(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/profiles/"))
    start, end = (page.index(f'id="profile-{world[name].pk}"') for name in ("small", "medium"))
    small = page[start:end]
    assert "s1" in small and "0.0100" in small and "s1b" in small and "0.0120" in small
    assert "no fit" not in small
    huge = page[page.index('id="profile-' + str(world["huge"].pk)):]
    assert huge.count("badge text-bg-danger\">no fit") == 2 and "sky-nofit" in huge
    assert "no flavor with 64 vCPU" in huge


def test_create_a_profile(client, dennis, acme):
    client.force_login(dennis)
    response = client.post("/catalog/profiles/new/", {"name": "XL", "vcpus": 8, "ram_mb": 32768, "disk_gb": 100,
                                                       "gpus": 0, "description": "big"})
    assert response.status_code == 302 and response["Location"] == "/catalog/profiles/"
    profile = HardwareProfile.objects.all_tenants().get(organization=acme, name="XL")
    assert (profile.vcpus, profile.ram_mb, profile.disk_gb) == (8, 32768, 100)


def test_bad_input_shows_errors_and_writes_nothing(client, dennis, world):
    client.force_login(dennis)
    before = HardwareProfile.objects.all_tenants().count()
    response = client.post("/catalog/profiles/new/", {"name": "Tiny", "vcpus": 0, "ram_mb": 64, "disk_gb": 0,
                                                       "gpus": 0})
    assert response.status_code == 400
    page = text(response)
    assert "greater than or equal to 1" in page and "greater than or equal to 128" in page
    assert 'value="Tiny"' in page
    # a name already taken is the service's refusal, shown on the name field
    taken = client.post("/catalog/profiles/new/", {"name": "Small", "vcpus": 1, "ram_mb": 1024, "disk_gb": 0,
                                                    "gpus": 0})
    assert taken.status_code == 400 and 'id="id_name_error"' in text(taken)
    assert HardwareProfile.objects.all_tenants().count() == before


def test_edit_a_profile(client, dennis, world):
    client.force_login(dennis)
    profile = world["medium"]
    page = text(client.get(f"/catalog/profiles/{profile.pk}/edit/"))
    assert 'value="Medium"' in page and 'value="4096"' in page
    response = client.post(f"/catalog/profiles/{profile.pk}/edit/", {"name": "Medium", "vcpus": 2, "ram_mb": 8192,
                                                                     "disk_gb": 0, "gpus": 0})
    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.ram_mb == 8192
    bad = client.post(f"/catalog/profiles/{profile.pk}/edit/", {"name": "", "vcpus": 2, "ram_mb": 1})
    assert bad.status_code == 400
    profile.refresh_from_db()
    assert (profile.name, profile.ram_mb) == ("Medium", 8192)


def test_who_may_do_what(client, personas, world):
    profile = world["small"]
    expect = {"dennis": (200, 200, 200), "sarah": (200, 403, 403), "connor": (404, 404, 404),
              "vera": (404, 404, 404), "mallory": (200, 200, 404)}
    for name, codes in expect.items():
        client.force_login(personas[name])
        got = (client.get("/catalog/profiles/").status_code, client.get("/catalog/profiles/new/").status_code,
               client.get(f"/catalog/profiles/{profile.pk}/edit/").status_code)
        assert got == codes, name
    client.force_login(personas["sarah"])
    assert client.post(f"/catalog/profiles/{profile.pk}/edit/", {"name": "Hacked", "vcpus": 1,
                                                                 "ram_mb": 2048}).status_code == 403
    profile.refresh_from_db()
    assert profile.name == "Small"


def test_list_runs_a_constant_number_of_queries(client, dennis, acme, world):
    account = world["account"]

    def grow(start, n):
        for i in range(start, start + n):
            make_profile(acme, f"Size {i}", 1 + i % 4, 1024 * (1 + i % 3))
            make_flavor(account, f"f{i}", 1 + i % 4, 1024 * (1 + i % 3), price="0.05")

    client.force_login(dennis)
    client.get("/catalog/profiles/")
    with CaptureQueriesContext(connection) as small:
        client.get("/catalog/profiles/")
    grow(0, 9)  # 3 profiles → 12
    with CaptureQueriesContext(connection) as large:
        response = client.get("/catalog/profiles/")
    assert "Size 8" in text(response)
    assert len(large.captured_queries) == len(small.captured_queries)
