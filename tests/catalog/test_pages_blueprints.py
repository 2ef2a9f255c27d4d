"""Blueprint pages: the list, the editor with its validation endpoint (line-numbered issues, preview with prices),
saving new versions, read-only old versions; who may do what; a constant number of queries."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.blueprints import blueprint_create
from apps.catalog.models import Blueprint, BlueprintVersion
from tests.catalog.pages_world import build_world
from tests.catalog.test_blueprints import EXAMPLE

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def world(acme, web, dennis):
    return build_world(acme, web, dennis)


def text(response) -> str:
    return response.content.decode()


def test_list_shows_blueprints_with_their_latest_version(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/blueprints/"))
    assert "Two tier" in page and "v2" in page and f'/catalog/blueprints/{world["blueprint"].pk}/' in page


def test_editor_shows_the_latest_source_preview_and_history(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get(f"/catalog/blueprints/{world['blueprint'].pk}/"))
    assert "max: 12" in page  # the latest version's source
    assert 'hx-post="/catalog/blueprints/validate/"' in page and 'hx-trigger="keyup changed delay:500ms' in page
    assert "font-monospace" in page
    assert "The blueprint is valid." in page
    assert "web-1" in page and "web-2" in page and "db-1" in page  # the preview, per server instance
    assert "0.0400" in page and "29.20" in page  # totals per hour and per month
    assert "Save as version 3" in page
    assert f'/catalog/blueprints/versions/{world["v2"].pk}/' in page and "more web servers" in page


def test_validate_endpoint_returns_line_numbered_issues(client, dennis, world):
    client.force_login(dennis)
    broken = EXAMPLE.replace("profile: medium", "profile: gigantic")
    response = client.post("/catalog/blueprints/validate/", {"source": broken, "blueprint": world["blueprint"].pk},
                           **HTMX)
    assert response.status_code == 200
    fragment = text(response)
    assert "<html" not in fragment
    line = broken.splitlines().index("    profile: gigantic") + 1
    assert f'data-goto-line="{line}"' in fragment and f"Line {line}" in fragment
    assert "gigantic" in fragment
    assert 'data-valid="0"' in fragment


def test_validate_endpoint_previews_a_valid_document(client, dennis, world):
    client.force_login(dennis)
    fragment = text(client.post("/catalog/blueprints/validate/", {"source": EXAMPLE}, **HTMX))
    assert 'data-valid="1"' in fragment and "db-1" in fragment and "sim-a" in fragment and "m2" in fragment


def test_validate_endpoint_reports_yaml_syntax_errors(client, dennis, world):
    client.force_login(dennis)
    fragment = text(client.post("/catalog/blueprints/validate/", {"source": "servers:\n  web: [\n"}, **HTMX))
    assert 'data-goto-line="' in fragment and 'data-valid="0"' in fragment


def test_save_creates_a_new_version(client, dennis, world):
    client.force_login(dennis)
    blueprint = world["blueprint"]
    response = client.post(f"/catalog/blueprints/{blueprint.pk}/", {"source": EXAMPLE.replace("max: 10", "max: 9"),
                                                                    "note": "fewer"})
    assert response.status_code == 302
    blueprint.refresh_from_db()
    assert blueprint.latest_version == 3
    latest = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint, number=3)
    assert "max: 9" in latest.source and latest.note == "fewer"


def test_invalid_source_is_not_saved_and_stays_in_the_editor(client, dennis, world):
    client.force_login(dennis)
    blueprint = world["blueprint"]
    broken = EXAMPLE.replace("count: 1", "count: -4")
    response = client.post(f"/catalog/blueprints/{blueprint.pk}/", {"source": broken, "note": "oops"})
    assert response.status_code == 400
    page = text(response)
    assert "count: -4" in page and 'value="oops"' in page  # input kept
    assert "data-goto-line=" in page
    assert BlueprintVersion.objects.all_tenants().filter(blueprint=blueprint).count() == 2


def test_create_a_blueprint(client, dennis, web, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/blueprints/new/"))
    assert "Create blueprint" in page
    bad = client.post("/catalog/blueprints/new/", {"project": web.pk, "name": "Broken", "source": "servers: 3\n"})
    assert bad.status_code == 400 and not Blueprint.objects.all_tenants().filter(name="Broken").exists()
    assert 'value="Broken"' in text(bad)
    ok = client.post("/catalog/blueprints/new/", {"project": web.pk, "name": "Single", "source": EXAMPLE})
    blueprint = Blueprint.objects.all_tenants().get(name="Single")
    assert ok.status_code == 302 and ok["Location"] == f"/catalog/blueprints/{blueprint.pk}/"
    assert blueprint.latest_version == 1


def test_old_versions_are_read_only_with_line_numbers(client, dennis, world):
    client.force_login(dennis)
    v1 = BlueprintVersion.objects.all_tenants().get(blueprint=world["blueprint"], number=1)
    page = text(client.get(f"/catalog/blueprints/versions/{v1.pk}/"))
    assert "old version, read-only" in page and "max: 10" in page
    assert page.count('class="sky-line"') == len(EXAMPLE.splitlines())
    assert "<textarea" not in page and "<form method=\"post\"" not in page.split('id="main"')[1]


def test_who_may_do_what(client, personas, world):
    blueprint = world["blueprint"]
    expect = {
        # list, editor, new, validate (POST)
        "dennis": (200, 200, 200, 200),
        "sarah": (200, 200, 403, 403),
        "connor": (404, 404, 404, 404),
        "vera": (404, 404, 404, 404),
        "mallory": (200, 404, 200, 200),
    }
    for name, codes in expect.items():
        client.force_login(personas[name])
        got = (client.get("/catalog/blueprints/").status_code,
               client.get(f"/catalog/blueprints/{blueprint.pk}/").status_code,
               client.get("/catalog/blueprints/new/").status_code,
               client.post("/catalog/blueprints/validate/", {"source": EXAMPLE}, **HTMX).status_code)
        assert got == codes, name
    client.force_login(personas["sarah"])
    page = text(client.get(f"/catalog/blueprints/{blueprint.pk}/"))
    assert "readonly" in page and "Save as version" not in page
    assert client.post(f"/catalog/blueprints/{blueprint.pk}/", {"source": EXAMPLE}).status_code == 403
    client.force_login(personas["mallory"])
    # another organisation's blueprint is not a context for validation either
    assert client.post("/catalog/blueprints/validate/", {"source": EXAMPLE, "blueprint": blueprint.pk},
                       **HTMX).status_code == 404
    assert BlueprintVersion.objects.all_tenants().filter(blueprint=blueprint).count() == 2


def test_list_runs_a_constant_number_of_queries(client, dennis, web, world):
    def grow(start, n):
        for i in range(start, start + n):
            blueprint_create(actor=dennis, project=web, name=f"Blueprint {i}", source=EXAMPLE)

    grow(0, 2)  # 3 blueprints
    client.force_login(dennis)
    client.get("/catalog/blueprints/")
    with CaptureQueriesContext(connection) as small:
        client.get("/catalog/blueprints/")
    grow(2, 9)  # 12
    with CaptureQueriesContext(connection) as large:
        response = client.get("/catalog/blueprints/")
    assert "Blueprint 10" in text(response)
    assert len(large.captured_queries) == len(small.captured_queries)
