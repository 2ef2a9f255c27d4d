"""Browser tests: real Chromium (Debian's /usr/bin/chromium) against daphne serving Skyport in a subprocess, on a
file-based SQLite database seeded with the demo, so websockets and live updates are the real thing."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workdir: Path, **extra_env: str) -> Iterator[dict]:
    """daphne serving Skyport from `workdir` (its own SQLite files and image store), seeded with the demo."""
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'e2e.sqlite3'}",
        "SKYPORT_TESTING": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SKYPORT_INPROCESS_SCHEDULER": "0",
        "SKYPORT_IMAGE_DIR": str(workdir / "images"),
        "SKYPORT_DEMO_URL": url,  # the demo's naming-policy hook calls this server
        "LOG_LEVEL": "WARNING",
        **extra_env,
    }
    env.pop("REDIS_URL", None)
    python = sys.executable
    # the sim cloud keeps its state on its own connection (its own file on SQLite): migrate it too
    for cmd in (["migrate", "--noinput", "-v0"], ["migrate", "--database", "sim", "--noinput", "-v0"], ["seed_demo"]):
        subprocess.run([python, "manage.py", *cmd], cwd=ROOT, env=env, check=True, capture_output=True)
    log = open(workdir / "daphne.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("daphne did not start: " + (workdir / "daphne.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    try:
        yield {"url": url, "env": env, "workdir": workdir}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
