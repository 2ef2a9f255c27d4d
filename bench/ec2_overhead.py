"""Portal overhead against direct libcloud: the same EC2 launches against the same moto server, in the same run.

    python -m bench.ec2_overhead [--launches 50] [--clients 5]

moto runs as its own process (`moto_server`); a small counting proxy in this process sits in front of it, so every
EC2 call of either side is counted by its Action where it arrives. Both sides use the same libcloud connection
adapted to moto's dialect (tests/clouds/moto_adapter.py: namespaces, empty bodies; nothing that adds calls).

 (a) direct: what a careful libcloud user does for the launch Skyport makes of an image catalog item (port 22
     open, a public address): create and open a security group, create_node with it and the tags, poll
     DescribeInstances at Skyport's poll interval until running, and allocate and associate an Elastic IP only
     when the instance has no public address (the default subnet gives one);
 (b) Skyport: `POST /api/v1/deployments/` (PostgreSQL + Redis + daphne + a real Celery worker + beat) until
     Skyport reports the deployment active: the `active` event on a token websocket that follows the project, as
     the portal's pages and `skyport launch --wait` learn it (`--poll-every S` polls the API instead).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import socketserver
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.api import FAILED_STATES, Client, Watcher
from bench.common import (
    print_setup,
    require_postgres,
    require_real_workers,
    require_redis,
    save,
    say,
    start_counting_proxy,
    summary,
    verdict,
)
from bench.stack import HOST, VENV_BIN, Stack, add_worker_arguments, workers_label

NAME = "ec2_overhead"
ADAPTER_ENV = "SKYPORT_BENCH_MOTO_ADAPTER"
REGION = "us-east-1"
AMI = {
    "ami_id": "ami-0a5c3558529277641", "name": "bench-ubuntu-22.04-x86_64", "description": "Ubuntu for the benchmark",
    "owner_id": "123456789012", "public": False, "state": "available", "architecture": "x86_64", "platform": None,
    "image_location": "bench/ubuntu", "image_type": "machine", "root_device_type": "ebs",
    "root_device_name": "/dev/sda1", "virtualization_type": "hvm", "hypervisor": "xen", "sriov": "simple",
}
TARGET_RATIO = 1.5
TARGET_EXTRA_CALLS = 1.0


def use_moto_adapter() -> None:
    """In the benchmark's worker and shell: the registry's "ec2" kind talks moto's dialect (test adapter)."""
    from apps.clouds import drivers

    drivers.DRIVER_PATHS["ec2"] = "tests.clouds.moto_adapter.MotoEC2Driver"


# --- counting proxy ---------------------------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions: Counter[str] = Counter()

    def add(self, action: str) -> None:
        with self.lock:
            self.actions[action] += 1

    def take(self) -> Counter[str]:
        with self.lock:
            taken, self.actions = self.actions, Counter()
        return taken


def start_proxy(port: int, upstream: int, counts: Counts) -> socketserver.ThreadingTCPServer:
    def count(path: str, params: dict[str, list[str]], authorization: str) -> None:
        if not path.startswith("/moto-api"):
            counts.add((params.get("Action") or ["(other)"])[0])

    server: socketserver.ThreadingTCPServer = start_counting_proxy(port, upstream, count, host=HOST)
    return server


def start_moto(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    amis = workdir / "amis.json"
    amis.write_text(json.dumps([AMI]))
    env = {**os.environ, "MOTO_ENABLE_AMI_VALIDATION": "true", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
           "MOTO_ENABLE_KEYPAIR_VALIDATION": "true", "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
           "MOTO_AMIS_PATH": str(amis)}
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", HOST, "-p", str(port)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/moto-api/data.json")
            conn.getresponse().read()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("moto_server did not start")


# --- (a) direct libcloud ----------------------------------------------------------------------------------------


def direct_driver(endpoint_port: int) -> Any:
    """Stock libcloud EC2 with only the moto dialect adapter (the connection class the tests use)."""
    from libcloud.compute.drivers.ec2 import EC2NodeDriver

    from tests.clouds.moto_adapter import MotoEC2Connection

    cls = type("DirectMotoEC2", (EC2NodeDriver,), {"connectionCls": MotoEC2Connection})
    return cls("bench", "bench-secret", region=REGION, host=HOST, port=endpoint_port, secure=False,
               signature_version="4")


def direct_launch(driver: Any, index: int, run: str, poll: float) -> float:
    """One launch as a careful user scripts it; returns seconds from the first call to running with an address."""
    from libcloud.compute.types import NodeState

    started = time.monotonic()
    name = f"direct-{run}-{index}"
    group = driver.ex_create_security_group(name, "port 22 for the benchmark")["group_id"]
    driver.ex_authorize_security_group_ingress(group, 22, 22, cidr_ips=["0.0.0.0/0"])
    node = driver.create_node(name=name, size=SimpleNamespace(id="t3.micro"), image=SimpleNamespace(id=AMI["ami_id"]),
                              ex_security_groups=[name], ex_metadata={"bench": run})
    while True:
        [node] = driver.list_nodes(ex_node_ids=[node.id])
        if node.state == NodeState.RUNNING:
            break
        time.sleep(poll)
    if not node.public_ips:  # the default subnet usually gives it one, as Skyport checks too
        address = driver.ex_allocate_address(domain="vpc")
        driver.ex_associate_address_with_node(node, address, domain="vpc")
    return time.monotonic() - started


# --- (b) through Skyport ----------------------------------------------------------------------------------------


def prepare(stack: Stack, endpoint: str) -> tuple[str, int, str]:
    """The demo's organisation plus an EC2 account on moto (synced), granted to `web`, with an approved image copy
    and a catalog item; no quotas in the way; a write token for connor."""
    out = stack.shell(
        f"import bench.ec2_overhead as b; b.use_moto_adapter(); "
        "from apps.accounts.models import User, Organization, Project; from apps.accounts import services; "
        "from apps.catalog.models import CatalogItem, CatalogPublication, HardwareProfile, Image, ImageCopy; "
        "from apps.clouds.models import CloudAccount, CloudGrant; from apps.clouds.services import sync_account; "
        "from apps.deployments.models import Quota, Hook; "
        "Quota.objects.all_tenants().update(max_instances=None, max_vcpus=None, max_ram_mb=None, max_disk_gb=None); "
        "Hook.objects.all_tenants().update(is_enabled=False); "
        "acme = Organization.objects.all_tenants().get(slug='acme'); "
        "web = Project.objects.all_tenants().get(slug='web'); "
        f"a = CloudAccount(organization=acme, name='EC2 moto', slug='ec2-moto', kind='ec2', endpoint={endpoint!r}, "
        f"regions=[{REGION!r}], default_region={REGION!r}, options={{}}); "
        "a.set_credentials({'access_key': 'bench', 'secret_key': 'bench-secret'}, secret_field='secret_key'); "
        "a.save(); "
        "r = sync_account(account=a); assert r.ok, r; "
        "CloudGrant.objects.create(organization=acme, account=a, project=web); "
        "img = Image.objects.create(organization=acme, project=web, name='Ubuntu', version='22.04', os='Ubuntu', "
        "source=Image.Source.UPLOAD, state=Image.State.READY, disk_format='raw', approval=Image.Approval.APPROVED, "
        "arch='x86_64'); "
        f"ImageCopy.objects.create(organization=acme, image=img, account=a, region={REGION!r}, "
        f"state=ImageCopy.State.AVAILABLE, provider_image_id={AMI['ami_id']!r}); "
        "p = HardwareProfile.objects.create(organization=acme, name='bench-micro', slug='bench-micro', vcpus=1, "
        "ram_mb=1024); "
        "item = CatalogItem.objects.create(organization=acme, project=web, name='Ubuntu on EC2', slug='ubuntu-ec2', "
        "kind=CatalogItem.Kind.IMAGE, image=img, profile=p); "
        "CatalogPublication.objects.create(organization=acme, item=item, project=web); "
        "u = User.objects.get(username='connor'); "
        "print(services.token_create(actor=u, organization=acme, name='bench', scope='write')[1]); "
        "print(web.pk)")
    secret, project = out.split()[-2:]
    return secret, int(project), "ec2-moto"


WALL = time.time() - time.monotonic()  # monotonic → wall clock, to line client stamps up with the rows' own


def skyport_launch(client: Client, watcher: Watcher | None, project: int, cloud: str, index: int, run: str,
                   poll_every: float, stamps: dict[int, tuple[float, float, float]]) -> float:
    """One launch through the API; returns seconds from the request until Skyport reports it active: the `active`
    event on the websocket (how the portal and `skyport launch --wait` learn it), or with `poll_every` the first API
    read that says so."""
    started = time.monotonic()
    status, body = client.request("POST", "/api/v1/deployments/", {
        "project": project, "catalog_item": "ubuntu-ec2", "cloud": cloud, "name": f"s{run}-{index}"})
    if status != 201:
        raise RuntimeError(f"launch answered {status}: {json.dumps(body)[:300]}")
    deployment = body["id"]
    answered = time.monotonic()
    if watcher is not None:
        active = watcher.wait_active(deployment, timeout=300)
        stamps[deployment] = (started + WALL, answered + WALL, active + WALL)
        return active - started
    deadline = started + 300
    while time.monotonic() < deadline:
        status, body = client.request("GET", f"/api/v1/deployments/{deployment}/")
        if body.get("state") == "active":
            return time.monotonic() - started
        if body.get("state") in FAILED_STATES:
            raise RuntimeError(f"deployment {deployment} {body.get('state')}: {body.get('state_message')}")
        time.sleep(poll_every)
    raise RuntimeError(f"deployment {deployment} not active after 300 s")


BREAKDOWN_SQL = """
SELECT d.id, extract(epoch FROM d.created_at), extract(epoch FROM min(o.created_at)),
       extract(epoch FROM min(o.finished_at)), extract(epoch FROM min(t.detected_at))
FROM deployments_deployment d
JOIN deployments_instance i ON i.deployment_id = d.id
JOIN clouds_operation o ON o.kind = 'create_server' AND o.params->>'instance_id' = i.id::text
JOIN deployments_instancetransition t ON t.instance_id = i.id AND t.to_state = 'running'
WHERE d.id = ANY(%s) GROUP BY d.id
"""


def breakdown(stack: Stack, stamps: dict[int, tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """Where a launch's time goes, in ms (p50/p95 of each phase), from the client's stamps and the rows' own:
    request (sent → 201), launch task (deployment row → create operation row: the queue hop, hooks, planning),
    provider steps (operation row → operation finished: claim, security group, create, first look, commits),
    follow-up (operation finished → running transition recorded), delivery (→ `active` at the websocket)."""
    import psycopg

    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(BREAKDOWN_SQL, (list(stamps),)).fetchall()
    phases: dict[str, list[float]] = {"request": [], "launch task": [], "provider steps": [], "follow-up": [],
                                      "delivery": []}
    for deployment, created, op_created, op_finished, running in rows:
        sent, answered, active = stamps[deployment]
        phases["request"].append((answered - sent) * 1000)
        phases["launch task"].append((float(op_created) - float(created)) * 1000)
        phases["provider steps"].append((float(op_finished) - float(op_created)) * 1000)
        phases["follow-up"].append((float(running) - float(op_finished)) * 1000)
        phases["delivery"].append((active - float(running)) * 1000)
    return {name: summary(values) for name, values in phases.items() if values}


def run_all(fn: Any, launches: int, clients: int) -> tuple[list[float], list[str], float]:
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            took = fn(index)
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        with lock:
            times.append(took)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(launches)))
    return times, errors, time.monotonic() - started


def per_launch(counts: Counter[str], launches: int) -> dict[str, float]:
    return {action: round(n / launches, 2) for action, n in sorted(counts.items())}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ec2_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=int(os.environ.get("BENCH_EC2_LAUNCHES", 50)))
    parser.add_argument("--clients", type=int, default=5, help="launches in flight at once, on both sides")
    parser.add_argument("--port", type=int, default=8625, help="daphne")
    parser.add_argument("--moto-port", type=int, default=5621)
    parser.add_argument("--proxy-port", type=int, default=5620)
    parser.add_argument("--poll-every", type=float, default=0.0,
                        help="follow (b) by polling the API every so many seconds instead of the websocket")
    add_worker_arguments(parser)
    parser.add_argument("--database", default="skyport_bench_ec2")
    return parser.parse_args()


def main() -> None:
    args = parse()
    stack = Stack(database=args.database, redis_db=4, port=args.port, extra_env={ADAPTER_ENV: "1"})
    os.environ.setdefault("DATABASE_URL", stack.database_url)
    os.environ.setdefault("REDIS_URL", stack.redis_url)
    require_postgres()
    require_redis()
    require_real_workers()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()  # the poll interval and the libcloud adapter come from the project itself
    from apps.clouds.operations import POLL_SECONDS
    workdir = Path(tempfile.mkdtemp(prefix="bench-ec2-"))
    moto = start_moto(args.moto_port, workdir)
    counts = Counts()
    proxy = start_proxy(args.proxy_port, args.moto_port, counts)
    endpoint = f"http://{HOST}:{args.proxy_port}"
    run = uuid.uuid4().hex[:6]
    try:
        with stack:
            stack.prepare()
            token, project, cloud = prepare(stack, endpoint)
            counts.take()  # the account's sync is set-up, not launches
            stack.start(workers=args.workers, concurrency=args.concurrency, pool=args.pool,
                        worker_module="bench.ec2_overhead")
            setup = print_setup(
                NAME, database=stack.database_url, redis=stack.redis_url, launches=args.launches,
                clients=args.clients, poll_seconds=POLL_SECONDS,
                skyport_followed_by=f"API poll every {args.poll_every} s" if args.poll_every else "websocket events",
                moto=f"moto_server on {HOST}:{args.moto_port}, "
                f"counted by a proxy on {args.proxy_port}", load_before=os.getloadavg(),
                processes=workers_label(args))

            driver = direct_driver(args.proxy_port)
            direct, direct_errors, direct_wall = run_all(
                lambda i: direct_launch(driver, i, run, POLL_SECONDS), args.launches, args.clients)
            direct_calls = counts.take()
            say(f"(a) direct libcloud: {len(direct)}/{args.launches} running in {direct_wall:.1f} s")

            client = Client(args.port, token)
            stamps: dict[int, tuple[float, float, float]] = {}
            watcher = None if args.poll_every else Watcher(args.port, token)
            if watcher is not None:
                watcher.start()
            portal, portal_errors, portal_wall = run_all(
                lambda i: skyport_launch(client, watcher, project, cloud, i, run, args.poll_every, stamps),
                args.launches, args.clients)
            if watcher is not None:
                watcher.stop.set()
            time.sleep(POLL_SECONDS + 1)  # calls still in flight after the last active (none expected)
            portal_calls = counts.take()
            say(f"(b) Skyport: {len(portal)}/{args.launches} active in {portal_wall:.1f} s")
            phases = breakdown(stack, stamps) if stamps else {}
            dead = stack.alive()
    finally:
        proxy.shutdown()
        moto.terminate()
        moto.wait(10)

    a, b = summary(direct), summary(portal)
    ratio50 = b["p50"] / a["p50"] if a["p50"] else float("nan")
    ratio95 = b["p95"] / a["p95"] if a["p95"] else float("nan")
    calls_a = sum(direct_calls.values()) / args.launches
    calls_b = sum(portal_calls.values()) / args.launches
    results = {
        "launches": args.launches, "clients": args.clients, "poll_seconds": POLL_SECONDS,
        "direct_s": a, "skyport_s": b, "ratio_p50": ratio50, "ratio_p95": ratio95,
        "added_ms_p50": (b["p50"] - a["p50"]) * 1000, "added_ms_p95": (b["p95"] - a["p95"]) * 1000,
        "direct_calls_per_launch": per_launch(direct_calls, args.launches),
        "skyport_calls_per_launch": per_launch(portal_calls, args.launches),
        "direct_calls_total_per_launch": calls_a, "skyport_calls_total_per_launch": calls_b,
        "skyport_phases_ms": phases,
        "errors": {"direct": direct_errors[:5], "skyport": portal_errors[:5]}, "exited_processes": dead,
        "load_after": os.getloadavg(),
    }
    say(f"(a) direct:  p50 {a['p50']:.2f} s, p95 {a['p95']:.2f} s")
    say(f"(b) Skyport: p50 {b['p50']:.2f} s, p95 {b['p95']:.2f} s")
    say(f"Skyport adds {results['added_ms_p50']:.0f} ms at p50, {results['added_ms_p95']:.0f} ms at p95 "
        f"(ratio {ratio50:.2f}x p50, {ratio95:.2f}x p95)")
    say(f"EC2 calls per launch, counted at moto: direct {calls_a:.2f} {results['direct_calls_per_launch']}")
    say(f"                                       Skyport {calls_b:.2f} {results['skyport_calls_per_launch']}")
    for name, figures in phases.items():
        say(f"  Skyport {name:>15}: p50 {figures['p50']:7.1f} ms, p95 {figures['p95']:7.1f} ms")
    for label, errors in (("direct", direct_errors), ("Skyport", portal_errors)):
        if errors:
            say(f"{label} errors ({len(errors)}): {errors[:3]}")
    verdict("Skyport / direct at p50", ratio50, TARGET_RATIO, unit="x")
    verdict("extra EC2 calls per launch", calls_b - calls_a, TARGET_EXTRA_CALLS)
    save(NAME, setup, results)


if os.environ.get(ADAPTER_ENV) == "1":
    use_moto_adapter()

if __name__ == "__main__":
    main()
