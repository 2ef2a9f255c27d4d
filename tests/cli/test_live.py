"""The `skyport` command, run as a real subprocess against a real Skyport (daphne serving the demo, its periodic
work in-process so launches reach running, the sim clouds made fast): logging in, the catalog, a launch followed to
running, every lifecycle command with --wait, watching through a dropped connection until the delete finishes,
images uploaded, imported from a URL and pushed, the error cases, and the parity of the client's table of API calls
with what it really called and with the server's OpenAPI schema.

It is one test on purpose: the commands act on one deployment in order, and the parity check at the end needs every
command to have run in the same process (xdist spreads separate tests over workers)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.cli.commands import API_CALLS
from apps.cli.main import build_parser
from tests.cli.relay import Relay
from tests.live import ROOT, _free_port, running_server

SKYPORT = Path(sys.executable).parent / "skyport"
SETUP = """
import json
from apps.accounts import services
from apps.accounts.models import Organization, User
from apps.clouds.sim.models import SimCloud
SimCloud.objects.update(durations={"build": 3, "stop": 2, "start": 2, "reboot": 2, "resize": 3, "delete": 2})
tokens = {}
for username, org in (("connor", "acme"), ("dennis", "acme"), ("mallory", "globex")):
    user = User.objects.get(username=username)
    organization = Organization.objects.all_tenants().get(slug=org)
    tokens[username] = services.token_create(actor=user, organization=organization, name="cli", scope="write")[1]
print(json.dumps(tokens))
"""
WAIT = 240  # a safety net against a hung process, never an expectation of speed


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Live:
    url: str
    port: int
    tokens: dict[str, str]
    workdir: Path
    ran: set[str] = field(default_factory=set)

    @property
    def trace(self) -> Path:
        return self.workdir / "trace.jsonl"

    @property
    def config(self) -> Path:
        return self.workdir / "config" / "skyport" / "config.json"

    def command(self, args: tuple[str, ...]) -> list[str]:
        with contextlib.suppress(SystemExit):  # a usage error: no command ran
            self.ran.add(build_parser().parse_args(list(args))._command.name)
        return [str(SKYPORT), *args] if SKYPORT.exists() else [sys.executable, "-m", "apps.cli", *args]

    def env(self, **extra: str) -> dict[str, str]:
        """Nothing of the test's own environment but PATH: no login leaks in from outside."""
        return {"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir / "home"), "LANG": "C.UTF-8",
                "XDG_CONFIG_HOME": str(self.workdir / "config"), "SKYPORT_TRACE": str(self.trace), **extra}

    def run(self, *args: str, env: dict[str, str] | None = None) -> Run:
        done = subprocess.run(self.command(args), env=self.env(**(env or {})), cwd=self.workdir, text=True,
                              capture_output=True, timeout=WAIT, stdin=subprocess.DEVNULL)
        assert "Traceback" not in done.stderr, done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(args), env=self.env(), cwd=self.workdir, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def on_terminal(self, *args: str, typed: str = "") -> Run:
        """Run with stdin, stdout and stderr on a pseudo-terminal (what a person at a terminal sees)."""
        leader, follower = pty.openpty()
        proc = subprocess.Popen(self.command(args), env=self.env(), cwd=self.workdir, stdin=follower,
                                stdout=follower, stderr=follower)
        os.close(follower)
        if typed:
            os.write(leader, typed.encode())
        output = b""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = proc.wait(timeout=WAIT)
        os.close(leader)
        return Run(code, output.decode(errors="replace"), "")

    def traced(self, command: str, method: str = "WS") -> int:
        if not self.trace.exists():
            return 0
        lines = [json.loads(line) for line in self.trace.read_text().splitlines()]
        return sum(1 for line in lines if line["command"] == command and line["method"] == method)

    def until(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            assert time.monotonic() < deadline, f"never happened: {what}"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("cli-live")
    (workdir / "home").mkdir()
    with running_server(workdir, SKYPORT_INPROCESS_SCHEDULER="1") as server:
        done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=server["env"],
                              check=True, capture_output=True, text=True)
        tokens = json.loads(done.stdout.strip().splitlines()[-1])
        yield Live(url=server["url"], port=int(server["url"].rsplit(":", 1)[1]), tokens=tokens, workdir=workdir)


def test_the_client_against_a_live_server(live, tmp_path):
    logging_in_and_browsing(live)
    errors(live)
    deployment_lifecycle(live)
    images(live, tmp_path)
    parity(live)


# --- steps --------------------------------------------------------------------------------------------------------
def logging_in_and_browsing(live: Live) -> None:
    connor = live.tokens["connor"]
    done = live.run("login", "--url", f"{live.url}/api/v1/", env={"SKYPORT_TOKEN": connor})
    assert done.code == 0, done.err
    assert f"Logged in to {live.url}\n" in done.out and "connor" in done.out
    assert connor not in done.out + done.err
    assert oct(live.config.stat().st_mode & 0o777) == "0o600"
    assert oct(live.config.parent.stat().st_mode & 0o777) == "0o700"
    assert json.loads(live.config.read_text())["profiles"]["default"] == {"url": live.url, "token": connor}

    refused = live.run("--profile", "wrong", "login", "--url", live.url, "--token", "sky_notavalidtoken")
    assert refused.code == 1
    assert refused.err.startswith("skyport: error: ") and "check the token" in refused.err
    assert "wrong" not in json.loads(live.config.read_text())["profiles"]  # nothing saved

    design = live.run("--profile", "design", "login", "--url", live.url, env={"SKYPORT_TOKEN": live.tokens["dennis"]})
    assert design.code == 0 and "dennis" in design.out
    spare = live.run("--profile", "spare", "login", "--url", live.url, env={"SKYPORT_TOKEN": connor})
    assert spare.code == 0
    gone = live.run("--profile", "spare", "logout")
    assert gone.code == 0 and f"Logged out of {live.url}" in gone.out
    assert sorted(json.loads(live.config.read_text())["profiles"]) == ["default", "design"]

    listing = live.run("catalog", "list")
    assert listing.code == 0
    assert listing.out.startswith("ID  SLUG ")
    assert re.search(r"debian-12-server +Debian 12 server +image +\$[\d.]+-[\d.]+", listing.out)
    items = live.run("-o", "json", "catalog", "list").json()
    assert {"debian-12-server", "two-tier-web-application"} <= {i["slug"] for i in items}
    assert all("price_monthly_min" in i for i in items)
    in_web = yaml.safe_load(live.run("catalog", "list", "--project", "web", "-o", "yaml").out)
    # published to web only what is in web: the Ubuntu server is offered in data
    assert {i["slug"] for i in in_web} == {"debian-12-server", "two-tier-web-application"}


def errors(live: Live) -> None:
    before = [d["id"] for d in live.run("-o", "json", "deployments", "list").json()]

    unknown = live.run("launch", "no-such-item", "--name", "x-unknown", "--project", "web")
    assert unknown.code == 1
    assert "catalog_item: No catalog item 'no-such-item' is offered to you." in unknown.err
    assert re.search(r"Idempotency-Key: [0-9a-f-]{36} \(to retry", unknown.err)

    quiet_trace = live.workdir / "bad-param.jsonl"
    bad = live.run("launch", "debian-12-server", "--name", "bad-param", "--project", "web", "--param", "web_count",
                   env={"SKYPORT_TRACE": str(quiet_trace)})
    assert bad.code == 2
    assert bad.err == "skyport: error: --param needs NAME=VALUE, not 'web_count'\n"
    assert not quiet_trace.exists()  # not one request was made
    assert [d["id"] for d in live.run("-o", "json", "deployments", "list").json()] == before  # nothing was created

    port = _free_port()
    down = live.run("--url", f"http://127.0.0.1:{port}", "deployments", "list")
    assert down.code == 1
    assert down.err == f"skyport: error: cannot reach Skyport at http://127.0.0.1:{port}: connection refused\n"

    acme = before[-1]  # one of connor's, in Acme
    other = live.run("--url", live.url, "--token", live.tokens["mallory"], "deployments", "show", str(acme))
    assert other.code == 1
    assert other.err.startswith("skyport: error: Not found.\n  it does not exist, or this token cannot see it")
    assert live.tokens["mallory"] not in other.err
    # the environment beats the saved login: mallory's token with connor's saved address
    assert live.run("deployments", "show", str(acme), env={"SKYPORT_TOKEN": live.tokens["mallory"]}).code == 1
    assert live.run("deployments", "show", str(acme)).code == 0

    nobody = live.run("deployments", "list", env={"XDG_CONFIG_HOME": str(live.workdir / "empty")})
    assert nobody.code == 2 and "run `skyport login` first" in nobody.err


def deployment_lifecycle(live: Live) -> None:
    key = str(uuid.uuid4())
    launch = ("launch", "Debian 12 server", "--name", "cli-box", "--project", "web", "--cloud", "sim-west",
              "--idempotency-key", key)
    launched = live.run("-o", "json", *launch, "--wait")
    assert launched.code == 0, launched.err
    box = launched.json()
    assert box["state"] == "active"
    assert [(i["state"], i["account_name"]) for i in box["instances"]] == [("running", "sim-west")]
    assert box["instances"][0]["public_ips"]
    assert "cli-box  active  1/1 running" in launched.err  # the last progress line
    again = live.run(*launch)  # a retry with the same key launches nothing new
    assert again.code == 0 and f"cli-box (id {box['id']})" in again.out
    assert [d["id"] for d in live.run("-o", "json", "deployments", "list", "--search", "cli-box").json()] == [box["id"]]

    listing = live.run("deployments", "list")
    assert re.search(rf"^{box['id']} +cli-box +active +Web +Debian 12 server +1 +connor ", listing.out, re.M)
    mine = yaml.safe_load(live.run("-o", "yaml", "deployments", "list", "--mine", "--state", "active").out)
    assert box["id"] in [d["id"] for d in mine] and {d["state"] for d in mine} == {"active"}
    assert box["id"] in [d["id"] for d in live.run("-o", "json", "deployments", "list", "--project", "web").json()]
    shown = live.run("deployments", "show", "cli-box")
    assert re.search(r"^cli-box +running +sim-west +west-1 +small \(1 vCPU, 2 GiB\) +small +" +
                     re.escape(box["instances"][0]["public_ips"][0]), shown.out, re.M)

    def state() -> tuple[str, list[str]]:
        d = live.run("-o", "json", "deployments", "show", str(box["id"])).json()
        return d["state"], [i["state"] for i in d["instances"]]

    declined = live.on_terminal("deployments", "delete", "cli-box", typed="n\n")
    assert declined.code == 1 and "Delete cli-box" in declined.out and "nothing was deleted" in declined.out
    refused = live.run("deployments", "delete", "cli-box")
    assert refused.code == 2 and "refusing to delete without --yes" in refused.err
    assert state() == ("active", ["running"])

    stopped = live.run("deployments", "stop", "cli-box", "--wait")
    assert stopped.code == 0, stopped.err
    assert stopped.out == f"cli-box (id {box['id']})  active  [cli-box stopped]\n"
    assert state() == ("active", ["stopped"])
    started = live.run("deployments", "start", "cli-box", "--wait")
    assert started.code == 0 and state() == ("active", ["running"])

    on_terminal = live.on_terminal("deployments", "reboot", "cli-box", "--wait")
    assert on_terminal.code == 0
    assert re.search(r"\rcli-box  active  1/1 running  \d\d:\d\d", on_terminal.out)  # one line, rewritten
    blocking = Relay(live.port, refuse_websockets=True)
    try:
        polled = live.run("--url", blocking.url, "deployments", "reboot", "cli-box", "--wait")
    finally:
        blocking.close()
    assert polled.code == 0, polled.err
    assert "live updates unavailable" in polled.err and "polling every 2 s" in polled.err
    assert blocking.refused >= 1 and state() == ("active", ["running"])

    resized = live.run("-o", "json", "deployments", "resize", "cli-box", "--size", "medium", "--wait")
    assert resized.code == 0, resized.err
    assert [(i["size"], i["vcpus"], i["state"]) for i in resized.json()["instances"]] == [("medium", 2, "running")]
    lease = live.run("-o", "json", "deployments", "show", "cli-box").json()["lease_expires_at"]
    extended = live.run("deployments", "extend", "cli-box", "--days", "3")
    assert extended.code == 0 and "lease ends " in extended.out
    assert live.run("-o", "json", "deployments", "show", "cli-box").json()["lease_expires_at"] != lease

    interrupted = live.start("deployments", "watch", "shop")
    live.until(lambda: live.traced("deployments watch") == 1, "the first watch connected")
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=WAIT) == 130

    relay = Relay(live.port)
    try:
        watcher = live.start("--url", relay.url, "deployments", "watch", "cli-box")
        live.until(lambda: live.traced("deployments watch") == 2, "the watch connected")
        relay.drop()
        live.until(lambda: live.traced("deployments watch") == 3, "the watch reconnected")
        deleted = live.run("deployments", "delete", "cli-box", "--yes", "--wait")
        assert deleted.code == 0, deleted.err
        assert deleted.out == f"cli-box (id {box['id']})  deleted\n"
        out, err = watcher.communicate(timeout=WAIT)
    finally:
        relay.close()
    assert watcher.returncode == 0, err
    assert out.startswith(f"cli-box (deployment {box['id']}): active at event ")
    assert re.search(r"resync \(after reconnecting\): cli-box active at event \d+; cli-box running", out)
    assert re.search(r"#\d+  cli-box  running -> deleting  \(deployment deleting\)", out)
    assert re.search(r"#\d+  cli-box  deleting -> deleted  \(deployment deleted\)\n$", out)
    assert "connection lost" in err and "reconnected" in err and f"cli-box (deployment {box['id']}) is deleted" in err


def images(live: Live, tmp_path: Path) -> None:
    design = ("--profile", "design")
    listing = live.run(*design, "images", "list")
    assert listing.code == 0 and re.search(r"^\d+ +Debian +12 +Web +ready +approved +qcow2", listing.out, re.M)

    raw, disk = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    raw.write_bytes(os.urandom(3 * 1024 * 1024))
    subprocess.run([shutil.which("qemu-img") or "qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(disk)], check=True, capture_output=True)
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    uploaded = live.run(*design, "images", "import", "--project", "web", "--name", "CliDisk", "--version", "1",
                        "--os", "Debian", "--file", str(disk), "--sha256", digest)
    assert uploaded.code == 0, uploaded.err
    assert re.search(r"^\d+ +CliDisk +1 +Web +ready +pending +qcow2 +x86_64 +3\.0 MiB", uploaded.out, re.M)
    steps = [line for line in uploaded.err.splitlines() if line.startswith("uploading disk.qcow2")]
    assert len(steps) >= 2 and "100%" in steps[-1]

    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    files = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        fetched = live.run(*design, "-o", "json", "images", "import", "--project", "web", "--name", "CliUrl",
                           "--version", "1", "--url", f"http://127.0.0.1:{files.server_address[1]}/disk.qcow2",
                           "--wait")
    finally:
        files.shutdown()
        files.server_close()
    assert fetched.code == 0, fetched.err
    image = fetched.json()
    assert (image["state"], image["checksum_sha256"], image["source"]) == ("ready", digest, "url")

    pushed = live.run(*design, "-o", "json", "images", "push", str(image["id"]), "--to", "sim-west",
                      "--to", "sim-east:east-1", "--wait")
    assert pushed.code == 0, pushed.err
    copies = pushed.json()
    assert sorted((c["account_name"], c["region"], c["state"]) for c in copies) == [
        ("sim-east", "east-1", "available"), ("sim-west", "west-1", "available")]
    assert all(c["provider_image_id"] for c in copies)
    nowhere = live.run(*design, "images", "push", str(image["id"]), "--to", "sim-north")
    assert nowhere.code == 1 and "cannot be pushed to 'sim-north' (it can go to: " in nowhere.err

    ready = yaml.safe_load(live.run(*design, "-o", "yaml", "images", "list", "--project", "web", "--state",
                                    "ready").out)
    assert {"CliDisk", "CliUrl", "Debian"} <= {i["name"] for i in ready}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$")


def parity(live: Live) -> None:
    """Every command of the table ran; each made only calls its row declares, and made each of them."""
    assert live.ran == set(API_CALLS), f"never run: {sorted(set(API_CALLS) - live.ran)}"
    made: dict[str, set[tuple[str, str]]] = {name: set() for name in API_CALLS}
    for line in map(json.loads, live.trace.read_text().splitlines()):
        declared = API_CALLS[line["command"]]
        matching = [(m, t) for m, t in declared if m == line["method"] and _pattern(t).match(line["path"])]
        assert matching, f"{line['command']} called {line['method']} {line['path']}, which its row does not declare"
        made[line["command"]].update(matching)
    for name, calls in API_CALLS.items():
        assert made[name] == set(calls), f"{name} never made {sorted(set(calls) - made[name])}"
