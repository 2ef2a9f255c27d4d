"""A real Skyport server for tests that need one across processes: daphne serving Skyport in a subprocess, on a
file-based SQLite database seeded with the demo, so websockets, live updates and the REST API are the real thing.
Used by the browser tests (tests/e2e) and the command-line client's tests (tests/cli)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
