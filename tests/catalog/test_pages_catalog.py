"""Catalog pages: management (every item, disabled ones too; create, edit, publish, enable), the consumers' cards with
their live search and the item detail; navigation and homes; who sees what; constant query counts."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.catalog import catalog_item_create
from apps.catalog.models import CatalogItem, CatalogPublication
from tests.catalog.pages_world import build_world

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def world(acme, web, dennis):
    return build_world(acme, web, dennis)


def text(response) -> str:
    return response.content.decode()


def card_names(html: str) -> list[str]:
    return re.findall(r'class="stretched-link[^"]*" href="/catalog/items/\d+/">([^<]+)</a>', html)


# --- consumers ----------------------------------------------------------------------------------------------------
def test_consumer_sees_only_enabled_items_published_to_their_projects(client, connor, world):
    client.force_login(connor)
    page = text(client.get("/catalog/"))
    assert card_names(page) == ["Debian small"]
    card = page[page.index('data-item-id="' + str(world["for_web"].pk)):]
    assert "Everyday Debian" in card and "/ hour" in card and "/ month" in card
    assert "needs approval above 50.00 / month" in card
    assert "Launch" not in page


def test_search_filters_live_with_a_fragment(client, connor, dennis, world, web):
    catalog_item_create(actor=dennis, project=web, name="Debian tiny",
                        kind="image", image=world["debian"], profile=world["small"], summary="For scripts",
                        publish_to=[web])
    client.force_login(connor)
    page = text(client.get("/catalog/"))
    assert 'hx-get="/catalog/"' in page and 'hx-trigger="input changed delay:300ms, search"' in page
    fragment = text(client.get("/catalog/?q=scripts", **HTMX))
    assert "<html" not in fragment and card_names(fragment) == ["Debian tiny"]
    assert card_names(text(client.get("/catalog/?q=retired", **HTMX))) == []  # the disabled one stays hidden
    assert "Nothing matches" in text(client.get("/catalog/?q=windows", **HTMX))
    full = client.get("/catalog/?q=scripts")
    assert "<html" in text(full) and full["Vary"].count("HX-Request") == 1


def test_current_project_decides_what_is_shown(client, connor, world, data):
    client.force_login(connor)
    assert card_names(text(client.get("/catalog/"))) == ["Debian small"]
    session = client.session
    session["project_id"] = data.pk
    session.save()
    assert card_names(text(client.get("/catalog/"))) == []  # nothing is published to data


def test_item_detail_shows_what_it_runs(client, connor, world):
    client.force_login(connor)
    page = text(client.get(f"/catalog/items/{world['for_web'].pk}/"))
    assert "Debian 12" in page and "Small" in page
    assert "s1" in page and "s1b" in page and "0.0100" in page and "region-2" in page
    assert "Edit" not in page.split('id="main"')[1]


def test_blueprint_item_detail_lists_the_servers(client, connor, dennis, world, web):
    item = catalog_item_create(actor=dennis, project=web, name="Web stack", kind="blueprint",
                               blueprint_version=world["v2"], publish_to=[web])
    client.force_login(connor)
    page = text(client.get(f"/catalog/items/{item.pk}/"))
    assert "Two tier" in page and "web-1" in page and "db-1" in page


def test_consumer_cannot_open_unpublished_or_disabled_items(client, connor, vera, mallory, world):
    for user in (connor, vera, mallory):
        client.force_login(user)
        assert client.get(f"/catalog/items/{world['unpublished'].pk}/").status_code == 404
        assert client.get(f"/catalog/items/{world['disabled'].pk}/").status_code == 404
    client.force_login(mallory)
    assert client.get(f"/catalog/items/{world['for_web'].pk}/").status_code == 404
    assert card_names(text(client.get("/catalog/"))) == []


# --- management ---------------------------------------------------------------------------------------------------
def test_management_lists_every_item_with_publications(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/manage/"))
    for name in ("Debian small", "Debian medium", "Old Debian"):
        assert name in page
    row = page[page.index(f'id="item-{world["disabled"].pk}"'):]
    row = row[:row.index("</tr>")]
    assert "disabled" in row and ">Enable<" in row
    assert "nowhere" in page and "badge text-bg-light border\">Web" in page


def test_create_an_item_and_publish_it(client, dennis, web, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/manage/new/"))
    assert 'name="icon"' in page and 'name="publish_to"' in page and "Ubuntu 24.04 (waiting for approval)" in page
    response = client.post("/catalog/manage/new/", {
        "project": web.pk, "name": "Debian web", "kind": "image", "image": world["debian"].pk,
        "profile": world["small"].pk, "icon": "globe", "approval_threshold_monthly": "0", "publish_to": [web.pk],
        "summary": "web servers",
    })
    assert response.status_code == 302
    item = CatalogItem.objects.all_tenants().get(name="Debian web")
    assert (item.icon, item.approval_threshold_monthly) == ("globe", 0)
    assert list(CatalogPublication.objects.all_tenants().filter(item=item).values_list("project", flat=True)) == [
        web.pk]


def test_item_form_refusals_keep_the_input_and_write_nothing(client, dennis, web, world):
    client.force_login(dennis)
    before = CatalogItem.objects.all_tenants().count()
    missing = client.post("/catalog/manage/new/", {"project": web.pk, "name": "Half", "kind": "image",
                                                   "icon": "server"})
    assert missing.status_code == 400 and "Choose one for an image item." in text(missing)
    # an unapproved image is the service's refusal
    pending = client.post("/catalog/manage/new/", {
        "project": web.pk, "name": "Pending one", "kind": "image", "image": world["pending"].pk,
        "profile": world["small"].pk, "icon": "server", "summary": "keep this",
    })
    assert pending.status_code == 400
    page = text(pending)
    assert "not approved" in page and 'value="keep this"' in page
    assert CatalogItem.objects.all_tenants().count() == before


def test_edit_an_item_and_its_publications(client, dennis, web, world):
    client.force_login(dennis)
    item = world["unpublished"]
    page = text(client.get(f"/catalog/manage/{item.pk}/edit/"))
    assert 'value="Debian medium"' in page and "disabled" in page  # kind and project are fixed
    response = client.post(f"/catalog/manage/{item.pk}/edit/", {
        "name": "Debian medium", "image": world["debian"].pk, "profile": world["medium"].pk, "icon": "database",
        "summary": "now published", "publish_to": [web.pk], "kind": "blueprint",
    })
    assert response.status_code == 302
    item.refresh_from_db()
    assert (item.icon, item.summary, item.kind) == ("database", "now published", "image")
    assert CatalogPublication.objects.all_tenants().filter(item=item, project=web).exists()
    client.post(f"/catalog/manage/{item.pk}/edit/", {
        "name": "Debian medium", "image": world["debian"].pk, "profile": world["medium"].pk, "icon": "database",
    })
    assert not CatalogPublication.objects.all_tenants().filter(item=item).exists()


def test_a_refused_edit_changes_nothing(client, dennis, web, world):
    client.force_login(dennis)
    item = world["for_web"]
    response = client.post(f"/catalog/manage/{item.pk}/edit/", {
        "name": "Renamed", "image": world["pending"].pk, "profile": world["small"].pk, "icon": "server",
        "publish_to": [web.pk],
    })
    assert response.status_code == 400 and 'value="Renamed"' in text(response)
    item.refresh_from_db()
    assert (item.name, item.image_id) == ("Debian small", world["debian"].pk)


def test_enable_and_disable(client, dennis, world):
    client.force_login(dennis)
    item = world["disabled"]
    assert client.post(f"/catalog/manage/{item.pk}/enable/", {"enabled": "1"}).status_code == 302
    item.refresh_from_db()
    assert item.is_enabled
    client.post(f"/catalog/manage/{item.pk}/enable/", {"enabled": "0"})
    item.refresh_from_db()
    assert not item.is_enabled


def test_who_may_manage(client, personas, world):
    item = world["for_web"]
    expect = {"dennis": (200, 200, 200), "sam": (200, 200, 200), "sarah": (403, 403, 404),
              "connor": (404, 404, 404), "vera": (404, 404, 404), "mallory": (200, 200, 404)}
    for name, codes in expect.items():
        client.force_login(personas[name])
        got = (client.get("/catalog/manage/").status_code, client.get("/catalog/manage/new/").status_code,
               client.get(f"/catalog/manage/{item.pk}/edit/").status_code)
        assert got == codes, name
    client.force_login(personas["connor"])
    assert client.post(f"/catalog/manage/{item.pk}/enable/", {"enabled": "0"}).status_code == 404
    item.refresh_from_db()
    assert item.is_enabled


# --- navigation -----------------------------------------------------------------------------------------------------
def main_nav(html: str) -> str:
    return html.split('id="main-nav"', 1)[1].split("</ul>", 1)[0]


def test_menus_and_homes_link_the_catalog(client, personas, world):
    client.force_login(personas["dennis"])
    nav = main_nav(text(client.get("/home/designer/")))
    assert 'href="/catalog/"' in nav and 'href="/catalog/images/"' in nav and "/catalog/approvals/" not in nav
    home = text(client.get("/home/designer/"))
    assert 'href="/catalog/blueprints/"' in home and 'href="/catalog/manage/"' in home
    client.force_login(personas["sarah"])
    home = text(client.get("/home/security/"))
    assert 'href="/catalog/approvals/"' in main_nav(home) and "Image approval queue" in home
    client.force_login(personas["connor"])
    home = text(client.get("/home/consumer/"))
    nav = main_nav(home)
    assert 'href="/catalog/"' in nav and "/catalog/images/" not in nav
    assert "Browse the catalog" in home


# --- query counts ---------------------------------------------------------------------------------------------------
def test_list_pages_run_a_constant_number_of_queries(client, dennis, connor, web, world):
    def grow(start, n):
        for i in range(start, start + n):
            catalog_item_create(actor=dennis, project=web, name=f"Debian {i}", kind="image", image=world["debian"],
                                profile=world["small"], publish_to=[web])

    pages = ((dennis, "/catalog/manage/"), (connor, "/catalog/"), (connor, "/catalog/?q=debian"))
    counts = {}
    for user, url in pages:
        client.force_login(user)
        client.get(url)
        with CaptureQueriesContext(connection) as small:
            client.get(url)
        counts[url] = len(small.captured_queries)
    grow(0, 9)  # 3 items → 12
    for user, url in pages:
        client.force_login(user)
        client.get(url)
        with CaptureQueriesContext(connection) as large:
            response = client.get(url)
        assert "Debian 8" in text(response)
        assert len(large.captured_queries) == counts[url], url
