"""What a person sees in Chromium: every persona's home, a phone-sized screen, a token shown once."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

PERSONA_HOME = {
    "sam": ("/home/sysadmin/", "Sysadmin"),
    "marty": ("/home/infrastructure/", "Infrastructure"),
    "sarah": ("/home/security/", "Security"),
    "dennis": ("/home/designer/", "Designer"),
    "connor": ("/home/consumer/", "Consumer"),
    "vera": ("/home/consumer/", "Consumer"),
    "mallory": ("/home/sysadmin/", "Sysadmin"),
}


@pytest.mark.parametrize("username", sorted(PERSONA_HOME))
def test_each_persona_lands_on_their_home_without_errors(login, username):
    page = login(username)
    path, label = PERSONA_HOME[username]
    assert page.url.endswith(path), page.url
    assert label in page.inner_text("nav")
    assert page.console_errors == []
    if username == "mallory":
        assert "Acme" not in page.content()


def test_narrow_screen_collapses_the_navigation(login):
    page = login("sam", viewport={"width": 390, "height": 844})
    toggler = page.locator(".navbar-toggler")
    assert toggler.is_visible()
    assert not page.locator("#main-nav").is_visible()
    toggler.click()
    page.wait_for_selector("#main-nav.show")
    assert page.locator("#main-nav").is_visible()
    # nothing overflows the phone's width
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.console_errors == []


def test_token_is_shown_once_and_works(login, server):
    page = login("connor")
    page.goto("/tokens/")
    page.fill("input[name=name]", "laptop")
    page.select_option("select[name=scope]", "read")
    page.click("form[action$='/tokens/new/'] button[type=submit]")
    secret = page.input_value("#token-secret")
    assert secret.startswith("sky_")

    request = urllib.request.Request(server["url"] + "/api/v1/me/", headers={"Authorization": f"Token {secret}"})
    me = json.load(urllib.request.urlopen(request, timeout=5))
    assert me["user"]["username"] == "connor"

    page.goto("/tokens/")
    assert "laptop" in page.content()
    assert secret not in page.content()
    assert page.console_errors == []


def test_removed_member_is_signed_out_live(login, server):
    """Sam removes Vera's role; Vera's open page learns it over the websocket at once, without polling."""
    vera = login("vera")
    vera.wait_for_selector("#notifications-live[data-state=live]", state="attached")
    sam = login("sam")
    sam.goto("/org/members/")
    sam.on("dialog", lambda dialog: dialog.accept())
    row = sam.locator("tr", has_text="vera").filter(has_text="Web")
    row.locator("button", has_text="Remove").click()
    sam.wait_for_load_state("networkidle")
    assert "vera" not in sam.locator("table").inner_text()

    try:
        vera.wait_for_selector("text=Your session has ended", timeout=10_000)
        vera.click("text=Sign in again")
        vera.wait_for_load_state("networkidle")
        assert "/accounts/login/" in vera.url
        assert vera.console_errors == []
    finally:  # give Vera her role back for the other tests on this server
        subprocess.run([sys.executable, "manage.py", "seed_demo"], cwd=ROOT, env=server["env"], check=True,
                       capture_output=True)
