"""Smoke test of the production set-up, across processes: `make serve` (daphne + Celery worker + Celery beat, run by
honcho) on PostgreSQL and Redis; a write token; a launch on the sim cloud through the REST API; its transitions
received over /ws/deployments/ with the token in a header; a stop; a delete. Exits non-zero with the reason on the
first thing that does not happen.

    python scripts/production_smoke.py      (the .ci/run stage `production` sets the environment and runs it)

Needs DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY and SKYPORT_FERNET_KEYS in the environment; the database is
migrated and seeded with the demo here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
HOST, PORT = "127.0.0.1", os.environ.get("SKYPORT_SMOKE_PORT", "8077")
BASE = f"http://{HOST}:{PORT}"
LIMIT = 180.0


def say(text: str) -> None:
    print(f"[smoke] {text}", flush=True)


def fail(text: str) -> None:
    say(f"FAIL: {text}")
    sys.exit(1)


def manage(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"manage.py {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout


def http(method: str, path: str, token: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(BASE + path, method=method, data=json.dumps(body).encode() if body else None)
    request.add_header("Authorization", f"Token {token}")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            fail("make serve exited")
        try:
            with urllib.request.urlopen(BASE + "/readyz", timeout=2) as response:
                body = json.loads(response.read())
                if response.status == 200:
                    say(f"ready: {body['checks']}")
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    fail("/readyz never answered 200")


async def follow(deployment_id: int, token: str, until: set[str], seen: list[dict[str, Any]]) -> None:
    """Watch the deployment over the websocket until its instance reaches one of `until`."""
    import websockets

    url = f"ws://{HOST}:{PORT}/ws/deployments/"
    async with websockets.connect(url, additional_headers={"Authorization": f"Token {token}"}) as socket:
        await socket.send(json.dumps({"type": "watch", "deployment": deployment_id}))
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=deadline - time.monotonic()))
            if message.get("deployment") != deployment_id:
                continue
            seen.append(message)
            if message.get("type") == "watching" and message.get("state") in until:
                return
            if message.get("type") == "deployment.event" and (
                    message.get("instance_state") in until or message.get("state") in until):
                return
        raise TimeoutError(f"no event with {sorted(until)}")


def main() -> None:
    env = {**os.environ, "CELERY_TASK_ALWAYS_EAGER": "0", "SKYPORT_ENABLE_SIM": "1",
           "SKYPORT_ALLOWED_PRIVATE_NETWORKS": "127.0.0.1/32", "SKYPORT_DEMO_URL": BASE,
           "ALLOWED_HOSTS": HOST, "SKYPORT_INPROCESS_SCHEDULER": "0"}
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SKYPORT_FERNET_KEYS"):
        if not env.get(name):
            fail(f"{name} is not set")
    manage("migrate", "--noinput", env=env)
    # the demo seed pushes images and launches: inline here, so it is complete before the stack starts
    manage("seed_demo", env={**env, "CELERY_TASK_ALWAYS_EAGER": "1"})
    token = manage("shell", "-c", (
        "from apps.accounts.models import User, Organization, Project; from apps.accounts import services; "
        "from apps.clouds.sim.models import SimCloud; "
        "SimCloud.objects.update(durations={'build': 3, 'stop': 2, 'start': 2, 'delete': 2}); "
        "u = User.objects.get(username='connor'); o = Organization.objects.all_tenants().get(slug='acme'); "
        "print(services.token_create(actor=u, organization=o, name='smoke', scope='write')[1]); "
        "print(Project.objects.all_tenants().get(slug='web').pk)"), env=env).split()
    secret, web = token[-2], int(token[-1])

    log = open(os.environ.get("SKYPORT_SMOKE_LOG", "/tmp/skyport-smoke-serve.log"), "w")  # noqa: SIM115
    server = subprocess.Popen(["make", "serve", f"HOST={HOST}", f"PORT={PORT}"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server)
        started = time.monotonic()
        key = f"smoke-{uuid.uuid4().hex[:8]}"
        body = {"project": web, "catalog_item": "debian-12-server", "name": "smoke-box"}
        status, created = http("POST", "/api/v1/deployments/", secret, body, {"Idempotency-Key": key})
        if status != 201:
            fail(f"launch answered {status}: {created}")
        again, repeated = http("POST", "/api/v1/deployments/", secret, body, {"Idempotency-Key": key})
        if again != 200 or repeated["id"] != created["id"]:
            fail(f"a retried launch answered {again} with {repeated.get('id')}, not 200 with {created['id']}")
        deployment_id = created["id"]
        say(f"launched deployment {deployment_id} ({created['state']}) in {time.monotonic() - started:.2f} s")
        seen: list[dict[str, Any]] = []
        asyncio.run(follow(deployment_id, secret, {"running", "active"}, seen))
        say(f"running after {time.monotonic() - started:.1f} s; events over the websocket: "
            + ", ".join(f"{m.get('sequence')}:{m.get('instance_state') or m.get('state')}" for m in seen))
        if not any(m.get("type") == "deployment.event" for m in seen) and seen[0].get("state") != "active":
            fail("no deployment event arrived over the websocket")
        status, detail = http("GET", f"/api/v1/deployments/{deployment_id}/", secret)
        if detail["state"] != "active":
            fail(f"the API says {detail['state']}, not active")

        status, _ = http("POST", f"/api/v1/deployments/{deployment_id}/stop/", secret, {})
        if status != 202:
            fail(f"stop answered {status}")
        stopped: list[dict[str, Any]] = []
        asyncio.run(follow(deployment_id, secret, {"stopped"}, stopped))
        say("stopped, seen over the websocket")
        status, _ = http("DELETE", f"/api/v1/deployments/{deployment_id}/", secret)
        if status != 202:
            fail(f"delete answered {status}")
        gone: list[dict[str, Any]] = []
        asyncio.run(follow(deployment_id, secret, {"deleted"}, gone))
        say(f"deleted; the whole round trip took {time.monotonic() - started:.1f} s")
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    say("ok")


if __name__ == "__main__":
    main()
