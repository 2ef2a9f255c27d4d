"""Freshness: a server changes inside the cloud behind Skyport's back and a websocket that watches its deployment
shows it. Measured: time from the change to the event at the socket (p50/p95/max), changes never shown, and how
many list calls each account-region got per sweep.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python -m bench.freshness [--provider sim|moto] [--instances 1000] [--changes 40] [--watched 40]

Real stack: daphne, one Celery worker (2 processes) and Celery beat on PostgreSQL + Redis; the reconciler runs from
beat exactly as in production. `--instances` servers (two per deployment) are spread over four account-regions; a
socket (a member's token) watches `--watched` deployments, spread evenly over them, and pings every 20 s as a client
should. Changes are made at random intervals of 1.5-3.5 s, so they land at every phase of the sweep cycle, and are
stamped once written:

- sim: two simulated clouds with two regions each; a server is stopped, or its host dies, by writing the simulated
  cloud's rows (its own connection, autocommit). Calls are counted by the simulated cloud's own counters.
- moto: one EC2 account with four regions on moto's EC2 server (reset first), reached through a counting proxy in
  this process, with the worker using the test-only moto dialect adapter; instances are made with boto3 and stopped
  with boto3 against moto directly. The proxy counts DescribeInstances per region, as a list (no ids; filtered by
  instance state) or a look-up of given ids.

Sweeps are counted by polling SweepState.last_started_at every 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import time
from typing import Any

from bench import _scale
from bench.common import print_setup, require_postgres, require_real_workers, require_redis, save, say, verdict
from bench.stack import Stack, add_worker_arguments

DATABASE = "skyport_bench_fresh"
REDIS_DB = 6
PORT = 8632
TARGET_P95_S = 5.0
REGIONS = {"sim-east": ["east-1", "east-2"], "sim-west": ["west-1", "west-2"]}
WAIT_AFTER_LAST = 60.0
MOTO_PORT = 5631
PROXY_PORT = 5632


# --- the world --------------------------------------------------------------------------------------------------------
def build_world(instances: int) -> list[dict[str, Any]]:
    """Four account-regions (sim-west gains west-2) with `instances` running servers that exist in the simulated
    cloud and in Skyport, two per deployment. Returns the deployments with their instances and places."""
    from django.conf import settings
    from django.utils import timezone

    from apps.accounts.models import Project, User
    from apps.clouds.models import CloudAccount
    from apps.clouds.sim.models import SimCloud, SimServer
    from apps.deployments.models import Deployment, Instance

    accounts = {}
    for slug, regions in REGIONS.items():
        account = CloudAccount.objects.all_tenants().get(slug=slug)
        CloudAccount.objects.all_tenants().filter(pk=account.pk).update(regions=regions)
        SimCloud.objects.filter(endpoint=account.endpoint).update(regions=regions)
        accounts[slug] = (account, SimCloud.objects.get(endpoint=account.endpoint))
    places = [(slug, region) for slug, regions in REGIONS.items() for region in regions]
    owner = User.objects.get(username="connor")
    projects = list(Project.objects.all_tenants().filter(slug__in=["web", "data"]))
    now = timezone.now()
    deployments = Deployment.objects.all_tenants().bulk_create([
        Deployment(organization=projects[0].organization, project=projects[n % 2], owner=owner, created_by=owner,
                   name=f"fresh-{n}", state="active")
        for n in range(instances // 2)
    ])
    rows, servers, world = [], [], []
    for n, deployment in enumerate(deployments):
        slug, region = places[n % len(places)]
        account, _cloud = accounts[slug]
        entry = {"deployment": deployment.pk, "place": f"{slug}/{region}", "instances": []}
        for index in (1, 2):
            server_id = f"fresh-{deployment.pk}-{index}"
            rows.append(Instance(
                organization=deployment.organization, project=deployment.project, deployment=deployment,
                owner=owner, name=f"fresh-{n}-web-{index}", role="web", index=index, account=account, region=region,
                size="small", flavor_id="s1", vcpus=1, ram_mb=1024, disk_gb=10, provider_server_id=server_id,
                state="running", state_changed_at=now,
            ))
            entry["instances"].append(server_id)
        world.append(entry)
    made = Instance.objects.all_tenants().bulk_create(rows, batch_size=1000)
    cloud_of = {slug: cloud for slug, (_account, cloud) in accounts.items()}
    for instance in made:
        slug = next(s for s, (account, _c) in accounts.items() if account.pk == instance.account_id)
        servers.append(SimServer(
            cloud=cloud_of[slug], server_id=instance.provider_server_id, name=instance.name, region=instance.region,
            size_id="s1", image_id="img-bench", private_ip="10.9.0.1", state="running", created_at=now,
            tags={"skyport:installation": settings.SKYPORT_INSTALLATION_ID, "skyport:instance": str(instance.pk)},
        ))
    SimServer.objects.bulk_create(servers, batch_size=1000)
    by_server = {i.provider_server_id: i.pk for i in made}
    for entry in world:
        entry["instances"] = [(by_server[s], s) for s in entry["instances"]]
    return world


def change_in_cloud(server_id: str, how: str) -> float:
    """Stop the server, or let its host die, in the simulated cloud (autocommit on its own connection); returns
    the time right after the write."""
    from django.utils import timezone

    from apps.clouds.sim.models import SimServer

    rows = SimServer.objects.filter(server_id=server_id)
    if how == "stop":
        rows.update(state="stopped", next_state="", transition_ends_at=None)
    else:  # the sim turns a server whose dies_at has passed into error at its next look
        rows.update(dies_at=timezone.now() - datetime.timedelta(seconds=1))
    return time.time()


def sweep_marks() -> dict[str, str]:
    from apps.deployments.models import SweepState

    return {f"{a}/{r}": str(t) for a, r, t in SweepState.objects.values_list("account__slug", "region",
                                                                             "last_started_at")}


def call_counts() -> dict[str, dict[str, int]]:
    from apps.clouds.sim.models import SimCloud

    return {endpoint: dict(counts) for endpoint, counts in SimCloud.objects.values_list("endpoint", "call_counts")}


def settled(places: set[str]) -> bool:
    """Every account-region was swept at least once since the stack started (first sweeps see every server)."""
    from apps.deployments.models import SweepState

    done = {f"{a}/{r}" for a, r in SweepState.objects.filter(last_finished_at__isnull=False)
            .values_list("account__slug", "region")}
    return places <= done


# --- the run ----------------------------------------------------------------------------------------------------------
async def run(stack: Stack, token: str, world: list[dict[str, Any]], changes: int, watched_count: int,
              seed: int, provider: Provider) -> dict[str, Any]:
    import websockets

    rng = random.Random(seed)
    by_place: dict[str, list[dict[str, Any]]] = {}
    for entry in world:
        by_place.setdefault(entry["place"], []).append(entry)
    per_place = max(1, watched_count // len(by_place))
    watched = [entry for entries in by_place.values() for entry in entries[:per_place]]
    url = stack.base_url.replace("http://", "ws://") + "/ws/deployments/"
    shown: dict[int, tuple[float, str]] = {}  # instance id → (time, state) of the first event showing the change
    wanted: dict[int, str] = {}
    stop = asyncio.Event()
    marks: dict[str, set[str]] = {}
    received: dict[str, int] = {}  # messages by type (and event kind): a silent socket shows here

    async def poll_sweeps() -> None:
        while not stop.is_set():
            for place, mark in (await asyncio.to_thread(sweep_marks)).items():
                marks.setdefault(place, set()).add(mark)
            await asyncio.sleep(0.2)

    async with websockets.connect(url, additional_headers={"Authorization": f"Token {token}"},
                                  max_queue=None, ping_interval=None) as socket:
        assert json.loads(await socket.recv())["type"] == "hello"
        for entry in watched:
            await socket.send(json.dumps({"type": "watch", "deployment": entry["deployment"]}))

        async def listen() -> None:
            last_ping = time.monotonic()
            while not stop.is_set():
                if time.monotonic() - last_ping > 20:
                    await socket.send(json.dumps({"type": "ping"}))
                    last_ping = time.monotonic()
                try:
                    raw = await asyncio.wait_for(socket.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                at, message = time.time(), json.loads(raw)
                kind = f"{message.get('type')}:{message.get('event', '')}"
                received[kind] = received.get(kind, 0) + 1
                instance = message.get("instance")
                if message.get("type") == "deployment.event" and instance in wanted and instance not in shown \
                        and message.get("instance_state") == wanted[instance]:
                    shown[instance] = (at, message["instance_state"])

        listener, poller = asyncio.create_task(listen()), asyncio.create_task(poll_sweeps())
        await asyncio.sleep(8)  # presence recorded, the fast cadence set by the next sweeps
        before_calls, started = await asyncio.to_thread(provider.counts), time.monotonic()
        marks.clear()
        candidates = [(entry["place"], pk, sid) for entry in watched for pk, sid in entry["instances"]]
        rng.shuffle(candidates)
        made: list[tuple[int, str, str, float]] = []
        for n, (place, pk, server_id) in enumerate(candidates[:changes]):
            how = provider.hows[n % len(provider.hows)]
            wanted[pk] = "stopped" if how == "stop" else "error"
            made.append((pk, place, how, await asyncio.to_thread(provider.change, place, server_id, how)))
            await asyncio.sleep(rng.uniform(1.5, 3.5))
        deadline = time.monotonic() + WAIT_AFTER_LAST
        while len(shown) < len(made) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        window = time.monotonic() - started
        after_calls = await asyncio.to_thread(provider.counts)
        stop.set()
        await asyncio.gather(listener, poller)
    latencies = [shown[pk][0] - at for pk, _place, _how, at in made if pk in shown]
    by_how = {how: _scale.summary_ms([shown[pk][0] - at for pk, _p, h, at in made if h == how and pk in shown])
              for how in provider.hows}
    sweeps = {place: len(m) - 1 for place, m in sorted(marks.items())}  # the first mark is the one found at start
    calls = {key: after_calls.get(key, 0) - before_calls.get(key, 0) for key in after_calls}
    return {
        "changes": len(made), "shown": len(latencies), "never_shown": len(made) - len(latencies),
        "latency_s": {k: (v if k == "n" else round(v / 1000, 3)) for k, v in _scale.summary_ms(latencies).items()},
        "latency_ms_by_change": by_how, "window_seconds": round(window, 1), "watched_deployments": len(watched),
        "sweeps_per_place": sweeps, "provider_calls": calls, "messages_received": received,
        "list_calls_per_sweep": provider.lists_per_sweep(calls, sweeps), "load": _scale.load_average(),
    }


class Provider:
    """What the run needs from the cloud behind Skyport: make a change, and count the calls Skyport made."""

    hows: tuple[str, ...] = ("stop", "die")

    def change(self, place: str, server_id: str, how: str) -> float:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    def lists_per_sweep(self, calls: dict[str, int], sweeps: dict[str, int]) -> dict[str, float | None]:
        raise NotImplementedError


class SimProvider(Provider):
    """The simulated cloud: its rows are changed directly; its own per-method counters count the calls (per cloud;
    each cloud serves two of the account-regions)."""

    def change(self, place: str, server_id: str, how: str) -> float:
        return change_in_cloud(server_id, how)

    def counts(self) -> dict[str, int]:
        return {f"{endpoint} {method}": n for endpoint, methods in call_counts().items()
                for method, n in methods.items() if method in ("list_servers", "get_server")}

    def lists_per_sweep(self, calls: dict[str, int], sweeps: dict[str, int]) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for slug, regions in REGIONS.items():
            endpoint = "sim://acme-east" if slug == "sim-east" else "sim://acme-west"
            swept = sum(sweeps.get(f"{slug}/{r}", 0) for r in regions)
            found[slug] = round(calls.get(f"{endpoint} list_servers", 0) / swept, 2) if swept else None
        return found


# --- moto: EC2 through libcloud, counted at a proxy -------------------------------------------------------------------
EC2_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"]
EC2_SLUG = "ec2-moto"


class MotoProvider(Provider):
    """moto's EC2 server behind a counting proxy: Skyport's account points at the proxy, which counts each
    DescribeInstances by region (a list, or a look-up of given ids); changes go to moto directly, through boto3."""

    hows = ("stop",)

    def __init__(self, moto_port: int, proxy_port: int) -> None:
        import threading

        self.moto_port, self.proxy_port = moto_port, proxy_port
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def client(self, region: str) -> Any:
        import boto3

        return boto3.client("ec2", region_name=region, endpoint_url=f"http://127.0.0.1:{self.moto_port}",
                            aws_access_key_id="bench", aws_secret_access_key="bench-secret")

    def change(self, place: str, server_id: str, how: str) -> float:
        self.client(place.split("/", 1)[1]).stop_instances(InstanceIds=[server_id])
        return time.time()

    def count(self, key: str) -> None:
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.calls)

    def lists_per_sweep(self, calls: dict[str, int], sweeps: dict[str, int]) -> dict[str, float | None]:
        return {region: (round(calls.get(f"{region} list", 0) / sweeps[f"{EC2_SLUG}/{region}"], 2)
                         if sweeps.get(f"{EC2_SLUG}/{region}") else None) for region in EC2_REGIONS}

    def start_proxy(self) -> Any:
        import re

        from bench.common import is_look_up, start_counting_proxy

        provider = self
        scope = re.compile(r"Credential=[^/]+/\d+/([^/]+)/")

        def count(path: str, params: dict[str, list[str]], authorization: str) -> None:
            found = scope.search(authorization)
            region = found.group(1) if found else "?"
            action = (params.get("Action") or ["?"])[0]
            if action == "DescribeInstances":
                provider.count(f"{region} {'look-up' if is_look_up(params) else 'list'}")
            else:
                provider.count(f"{region} {action}")

        return start_counting_proxy(self.proxy_port, self.moto_port, count)


def build_moto_world(provider: MotoProvider, instances: int) -> list[dict[str, Any]]:
    """One EC2 account (on moto, through the proxy) with four regions and `instances` running instances made with
    boto3, two per deployment; moto reset first."""
    import urllib.request

    from apps.accounts.models import Organization, Project, User
    from apps.clouds.models import CloudAccount
    from apps.deployments.models import Deployment, Instance
    from bench.ec2_overhead import AMI

    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{provider.moto_port}/moto-api/reset",
                                                  method="POST"), timeout=30).read()
    acme = Organization.objects.all_tenants().get(slug="acme")
    account = CloudAccount(organization=acme, name="EC2 moto", slug=EC2_SLUG, kind="ec2",
                           endpoint=f"http://127.0.0.1:{provider.proxy_port}", regions=EC2_REGIONS,
                           default_region=EC2_REGIONS[0], options={})
    account.set_credentials({"access_key": "bench", "secret_key": "bench-secret"}, secret_field="secret_key")
    account.save()
    owner = User.objects.get(username="connor")
    projects = list(Project.objects.all_tenants().filter(slug__in=["web", "data"]))
    world: list[dict[str, Any]] = []
    per_region = instances // len(EC2_REGIONS)
    for region in EC2_REGIONS:
        ids: list[str] = []
        while len(ids) < per_region:
            batch = min(100, per_region - len(ids))
            made = provider.client(region).run_instances(ImageId=AMI["ami_id"], InstanceType="t3.micro",
                                                         MinCount=batch, MaxCount=batch)
            ids += [i["InstanceId"] for i in made["Instances"]]
        deployments = Deployment.objects.all_tenants().bulk_create([
            Deployment(organization=acme, project=projects[n % 2], owner=owner, created_by=owner,
                       name=f"fresh-{region}-{n}", state="active") for n in range(per_region // 2)])
        rows = []
        for n, deployment in enumerate(deployments):
            pair = ids[2 * n:2 * n + 2]
            for index, server_id in enumerate(pair, start=1):
                rows.append(Instance(
                    organization=acme, project=deployment.project, deployment=deployment, owner=owner,
                    name=f"fresh-{region}-{n}-{index}", role="web", index=index, account=account, region=region,
                    size="micro", flavor_id="t3.micro", vcpus=2, ram_mb=1024, provider_server_id=server_id,
                    state="running"))
            world.append({"deployment": deployment.pk, "place": f"{EC2_SLUG}/{region}", "instances": pair})
        made_rows = Instance.objects.all_tenants().bulk_create(rows)
        by_server = {i.provider_server_id: i.pk for i in made_rows}
        for entry in world:
            if entry["place"] == f"{EC2_SLUG}/{region}":
                entry["instances"] = [(by_server[s], s) for s in entry["instances"]]
    return world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=["sim", "moto"], default="sim")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--watched", type=int, default=40)
    parser.add_argument("--seed", type=int, default=3)
    add_worker_arguments(parser)
    parser.add_argument("--moto-port", type=int, default=MOTO_PORT)
    parser.add_argument("--proxy-port", type=int, default=PROXY_PORT)
    args = parser.parse_args()
    require_postgres()
    require_redis()
    require_real_workers()
    moto_process = None
    extra_env = {"SKYPORT_BENCH_MOTO_ADAPTER": "1"} if args.provider == "moto" else {}
    stack = Stack(database=DATABASE, redis_db=REDIS_DB, port=PORT, prefix=f"bench-fresh-{os.getpid()}",
                  extra_env=extra_env)
    try:
        with stack:
            stack.prepare()
            _scale.django_for(stack)
            from django.conf import settings

            provider: Provider
            if args.provider == "moto":
                from bench.ec2_overhead import start_moto

                moto_process = start_moto(args.moto_port, stack.var_dir)
                provider = MotoProvider(args.moto_port, args.proxy_port)
                provider.start_proxy()
                world = build_moto_world(provider, args.instances)
                places = {f"{EC2_SLUG}/{region}" for region in EC2_REGIONS}
                described = f"moto EC2 server (1 account, 4 regions) behind a counting proxy, port {args.proxy_port}"
            else:
                provider = SimProvider()
                world = build_world(args.instances)
                places = {f"{slug}/{region}" for slug, regions in REGIONS.items() for region in regions}
                described = "simulated cloud (2 clouds, 2 regions each)"
            token = _scale.token_for("connor")
            from django.db import connections

            connections.close_all()
            stack.start(workers=args.workers, concurrency=args.concurrency, pool=args.pool, beat=True,
                        worker_module="bench.ec2_overhead" if args.provider == "moto" else "")
            setup = print_setup(
                f"freshness-{args.provider}", provider=described, instances=args.instances, changes=args.changes,
                watched=args.watched, beat_schedule=settings.CELERY_BEAT_SCHEDULE["reconcile"],
                sweep_seconds={name: getattr(settings, name, None) for name in (
                    "SKYPORT_SWEEP_FAST_SECONDS", "SKYPORT_SWEEP_SLOW_SECONDS")},
                load_at_start=_scale.load_average(), processes=stack.command_lines(),
            )
            deadline = time.monotonic() + 240
            while not settled(places) and time.monotonic() < deadline:
                time.sleep(1)
            say(f"first sweeps done: {settled(places)}")
            results = asyncio.run(run(stack, token, world, args.changes, args.watched, args.seed, provider))
            dead = stack.alive()
            if dead:
                say(f"processes that exited: {dead}")
            say(f"changes {results['changes']}, shown {results['shown']}, latency {results['latency_s']} s; sweeps "
                f"{results['sweeps_per_place']} in {results['window_seconds']} s; list calls per sweep "
                f"{results['list_calls_per_sweep']}; provider calls {results['provider_calls']}")
            verdict("freshness p95", results["latency_s"]["p95"], TARGET_P95_S, unit=" s")
            verdict("changes never shown", results["never_shown"], 0)
            setup["load_at_end"] = _scale.load_average()
            save(f"freshness-{args.provider}", setup, results)
    finally:
        if moto_process is not None:
            moto_process.terminate()
            moto_process.wait(10)


if __name__ == "__main__":
    main()
