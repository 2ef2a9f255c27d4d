"""Deployments in Chromium against a server that runs its periodic work in-process (as the demo does): connor
launches from the catalog and watches the deployment come up live on its page (no reload, no polling), stops a
server and sees it stop; a name the naming-policy hook refuses shows the hook's words."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.test_catalog_e2e import mark_page, shell

pytestmark = pytest.mark.e2e

FAST_SIMS = """
import json
from apps.clouds.sim.models import SimCloud
SimCloud.objects.update(durations={"build": 3, "stop": 2, "start": 2, "reboot": 2, "resize": 3, "delete": 2})
from apps.accounts.models import Project
print(json.dumps({"web": Project.objects.all_tenants().get(slug="web").pk}))
"""


@pytest.fixture(scope="module")
def fast(scheduled_server):
    return shell(scheduled_server, FAST_SIMS)


def launch(page, web: int, name: str) -> None:
    page.goto(f"/deployments/launch/debian-12-server/?project={web}")
    page.fill("input[name=name]", name)
    page.click("#launch-form button[type=submit]")
    page.wait_for_load_state("domcontentloaded")


def test_launch_comes_up_live_then_stops_live(scheduled_login, fast):
    page = scheduled_login("connor")
    launch(page, fast["web"], "e2e-box")
    assert re.search(r"/deployments/\d+/$", page.url), page.url
    deployment_id = page.url.rstrip("/").split("/")[-1]
    mark_page(page)
    badge = page.locator(f'h1 [data-deployment-state="{deployment_id}"]')
    # provisioning → active arrives over the websocket: the page is never reloaded
    expect(badge).to_have_text("Active", timeout=60_000)
    assert page.evaluate("window.__sameDocument === true")
    assert page.locator("body").get_attribute("data-live-status") == "live"
    row = page.locator("tr", has_text="e2e-box").first
    expect(row.locator("[data-instance-state]")).to_have_text("Running")

    row.get_by_role("button", name=re.compile(r"^Stop")).click()
    page.wait_for_load_state("domcontentloaded")
    mark_page(page)
    instance_badge = page.locator("tr", has_text="e2e-box").first.locator("[data-instance-state]")
    expect(instance_badge).to_have_text("Stopped", timeout=60_000)
    assert page.evaluate("window.__sameDocument === true")
    assert page.console_errors == []


def test_the_naming_policy_hook_vetoes_with_its_message(scheduled_login, fast):
    page = scheduled_login("connor")
    launch(page, fast["web"], "forbidden-box")
    message = "Names containing 'forbidden' are not allowed by the Acme launch policy."
    expect(page.locator("[role=status]", has_text=message)).to_be_visible(timeout=30_000)
    deployment_id = page.url.rstrip("/").split("/")[-1]
    expect(page.locator(f'h1 [data-deployment-state="{deployment_id}"]')).to_have_text("Vetoed by a hook")
    assert page.console_errors == []
