"""Browser tests: real Chromium (Debian's /usr/bin/chromium) against daphne serving Skyport in a subprocess, on a
file-based SQLite database seeded with the demo, so websockets and live updates are the real thing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.live import running_server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SKYPORT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("e2e")) as running:
        yield running


@pytest.fixture(scope="session")
def scheduled_server(tmp_path_factory):
    """A second server whose periodic work runs in-process, as in the demo: operations resume and the reconciler
    sweeps inside the server, so launches reach running and their events reach the browser."""
    with running_server(tmp_path_factory.mktemp("e2e-live"), SKYPORT_INPROCESS_SCHEDULER="1") as running:
        yield running


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test-e2e`, which installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _signed_in(browser, base_url: str):
    contexts = []

    def make(username: str, **options):
        context = browser.new_context(base_url=base_url, **options)
        contexts.append(context)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.goto("/accounts/login/")
        page.fill("input[name=login]", username)
        page.fill("input[name=password]", "skyport-demo")
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        return page

    return make, contexts


@pytest.fixture
def login(server, browser):
    """login(username, **context_options) → a Playwright page signed in as that demo user; console errors are
    collected in page.console_errors."""
    make, contexts = _signed_in(browser, server["url"])
    yield make
    for c in contexts:
        c.close()


@pytest.fixture
def scheduled_login(scheduled_server, browser):
    """`login` on the live server."""
    make, contexts = _signed_in(browser, scheduled_server["url"])
    yield make
    for c in contexts:
        c.close()
