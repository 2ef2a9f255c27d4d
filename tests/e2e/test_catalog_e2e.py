"""The catalog in Chromium: the blueprint editor checks as you type, consumers search their catalog, and a copy's
progress on the image page follows the push live (no reload, no polling)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

SEED = """
import json
from apps.catalog.demo import seed_catalog
from apps.accounts.models import Membership, User
from apps.catalog.catalog import catalog_item_create
from apps.catalog.models import Blueprint, CatalogItem, HardwareProfile, Image
seed_catalog()
debian = Image.objects.all_tenants().get(name="Debian", version="12")
dennis, connor = User.objects.get(username="dennis"), User.objects.get(username="connor")
if not CatalogItem.objects.all_tenants().filter(slug="hidden-draft").exists():
    catalog_item_create(actor=dennis, project=debian.project, name="Hidden draft", kind="image", image=debian,
                        profile=HardwareProfile.objects.all_tenants().get(slug="large"), publish_to=[])
projects = Membership.objects.all_tenants().filter(user=connor).values("project_id")
print(json.dumps({
    "debian": debian.pk,
    "blueprint": Blueprint.objects.all_tenants().get(slug="two-tier-web").pk,
    "connor_items": sorted(set(CatalogItem.objects.all_tenants().filter(
        publications__project__in=projects, is_enabled=True).values_list("name", flat=True))),
}))
"""

FAIL_COPY = """
import json
from apps.catalog.models import ImageCopy
copy = ImageCopy.objects.all_tenants().filter(image_id={image}).order_by("pk").first()
ImageCopy.objects.all_tenants().filter(pk=copy.pk).update(state="failed", progress=0, error="disk full at the provider")
print(json.dumps({{"copy": copy.pk}}))
"""


def shell(server, code: str) -> dict:
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server["env"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def catalog(server):
    """The demo catalog (images pushed to the sim clouds, profiles, a blueprint, items) in the server's database."""
    return shell(server, SEED)


def mark_page(page) -> None:
    """A marker that only survives as long as the page is not reloaded."""
    page.evaluate("window.__sameDocument = true")


def same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def test_blueprint_editor_shows_issues_while_typing(login, catalog):
    page = login("dennis")
    page.goto(f"/catalog/blueprints/{catalog['blueprint']}/")
    page.wait_for_selector("text=The blueprint is valid.")
    mark_page(page)
    editor = page.locator("textarea.sky-source")
    editor.click()
    editor.press("Control+End")
    page.keyboard.type("unknown_key: 1")
    lines = page.evaluate("document.querySelector('textarea.sky-source').value.split('\\n').length")
    issue = page.locator(f"#blueprint-check [data-goto-line='{lines}']")
    issue.wait_for(timeout=10_000)
    assert f"Line {lines}" in issue.inner_text() and "unknown_key" in issue.inner_text()
    assert same_document(page)
    # fixing it brings the preview back
    for _ in range(len("unknown_key: 1")):
        page.keyboard.press("Backspace")
    page.wait_for_selector("#blueprint-check [data-valid='1']", timeout=10_000)
    assert "web-1" in page.inner_text("#blueprint-check")
    assert same_document(page)
    assert page.console_errors == []


def test_consumer_searches_the_published_catalog(login, catalog):
    page = login("connor", viewport={"width": 390, "height": 844})
    page.goto("/catalog/")
    cards = page.locator("#catalog-cards article h2")
    assert sorted(cards.all_inner_texts()) == catalog["connor_items"]
    assert "Two-tier web application" in catalog["connor_items"]
    assert "Hidden draft" not in page.content()  # published nowhere
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    mark_page(page)
    search = page.locator("input[name=q]")
    search.click()
    page.keyboard.type("windows")
    page.wait_for_selector("text=Nothing matches", timeout=10_000)
    assert page.locator("#catalog-cards article").count() == 0
    search.fill("")
    search.click()
    page.keyboard.type("two-tier")
    page.wait_for_function(
        "[...document.querySelectorAll('#catalog-cards article h2')].map(e => e.textContent.trim()).join() === "
        "'Two-tier web application'", timeout=10_000,
    )
    assert same_document(page)
    assert page.console_errors == []


def test_copy_progress_updates_live(login, server, catalog):
    copy = shell(server, FAIL_COPY.format(image=catalog["debian"]))["copy"]
    watcher = login("dennis")
    watcher.goto(f"/catalog/images/{catalog['debian']}/")
    watcher.wait_for_selector("#catalog-live[data-state=live]", state="attached")
    row = f"tr[data-copy-id='{copy}']"
    assert watcher.get_attribute(row, "data-state") == "failed"
    assert "disk full at the provider" in watcher.inner_text(row)
    mark_page(watcher)
    watcher.evaluate("""() => {
        window.__progress = [];
        new MutationObserver(records => records.forEach(r => {
            if (r.attributeName === 'aria-valuenow') window.__progress.push(r.target.getAttribute('aria-valuenow'));
        })).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['aria-valuenow']});
    }""")

    # somebody else retries the push; the watcher's page learns every step over the websocket
    other = login("dennis")
    other.goto(f"/catalog/images/{catalog['debian']}/")
    other.click(f"form[action='/catalog/copies/{copy}/retry/'] button")
    other.wait_for_load_state("networkidle")

    watcher.wait_for_selector(f"{row}[data-state=available]", timeout=15_000)
    watcher.wait_for_function(
        f"!document.querySelector(\"{row}\").textContent.includes('disk full')", timeout=10_000,
    )
    assert watcher.locator(f"{row} form").count() == 0  # the Retry button went with the failure
    assert "100" in watcher.evaluate("window.__progress")  # the bar moved in place before the row was refreshed
    assert watcher.get_attribute(f"{row} [data-role=progress]", "aria-valuenow") == "100"
    assert same_document(watcher)
    assert watcher.console_errors == []


@pytest.mark.parametrize("username, paths", [
    ("dennis", ["/catalog/images/", "/catalog/images/{debian}/", "/catalog/images/import/", "/catalog/profiles/",
                "/catalog/blueprints/", "/catalog/blueprints/{blueprint}/", "/catalog/manage/",
                "/catalog/manage/new/"]),
    ("sarah", ["/catalog/approvals/", "/home/security/"]),
    ("connor", ["/catalog/", "/home/consumer/"]),
])
def test_catalog_pages_fit_a_phone(login, catalog, username, paths):
    page = login(username, viewport={"width": 390, "height": 844})
    for path in paths:
        page.goto(path.format(**catalog))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    assert page.console_errors == []
