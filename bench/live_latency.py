"""Live events under many watchers: N websockets watch one deployment through daphne + channels-redis (token in a
header, from this process); a separate process drives the deployment's instance through transitions with the real
`transition()` service and stamps each commit. Measured: time from commit to receipt at every watcher (p50/p95/max)
and lost events (sequence numbers a watcher never received).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python -m bench.live_latency [--watchers 1,100,1000] [--events 100] [--rate 5]

The commit stamp is taken by an on-commit callback registered before the transition's own, so it runs right after
the COMMIT and before the events are handed to the channel layer. Sender and receivers share the machine's clock.
The one-watcher run is the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import _scale
from bench.common import PYTHON, ROOT, print_setup, require_postgres, require_redis, save, say, verdict
from bench.stack import Stack

DATABASE = "skyport_bench_live"
REDIS_DB = 6
PORT = 8631
TARGET_P95_MS = 200.0
CYCLE = ["stopping", "stopped", "starting", "running"]
CONNECT_CONCURRENCY = 50
DRAIN_QUIET = 5.0
DRAIN_LIMIT = 180.0


# --- the driver (a separate process) ----------------------------------------------------------------------------------
def drive(instance_id: int, events: int, rate: float, out: Path) -> None:
    """Move the instance round the stop/start cycle `events` times at `rate` per second; write {sequence: commit
    time} to `out`. Runs in its own process with Django set up on the stack's database."""
    import django

    django.setup()
    from django.db import transaction

    from apps.deployments.models import Deployment, Instance
    from apps.deployments.transitions import transition

    instance = Instance.objects.all_tenants().get(pk=instance_id)
    stamps: dict[int, float] = {}
    interval = 1.0 / rate
    next_at = time.monotonic()
    for n in range(events):
        committed: list[float] = []
        with transaction.atomic():
            transaction.on_commit(lambda: committed.append(time.time()))  # noqa: B023 - runs before the block ends
            transition(instance, to=CYCLE[n % len(CYCLE)], cause="user", message="bench")
        sequence = Deployment.objects.all_tenants().values_list("sequence", flat=True).get(pk=instance.deployment_id)
        stamps[int(sequence)] = committed[0]
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.write_text(json.dumps(stamps))


# --- the watchers (this process) --------------------------------------------------------------------------------------
class Watcher:
    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.start_sequence = 0
        self.errors: list[str] = []


async def _watch(url: str, token: str, deployment_id: int, watcher: Watcher, ready: asyncio.Semaphore,
                 connected: asyncio.Event, stop: asyncio.Event) -> None:
    import websockets

    try:
        async with ready:
            socket = await websockets.connect(url, additional_headers={"Authorization": f"Token {token}"},
                                              open_timeout=60, max_queue=None, ping_interval=None)
            hello = json.loads(await socket.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"no hello: {hello}")
            await socket.send(json.dumps({"type": "watch", "deployment": deployment_id}))
            while True:
                message = json.loads(await socket.recv())
                if message.get("type") == "watching":
                    watcher.start_sequence = int(message["sequence"])
                    break
        connected.set()
        async with socket:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(socket.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                at = time.time()
                message = json.loads(raw)
                if message.get("type") == "deployment.event" and message.get("deployment") == deployment_id:
                    watcher.received.setdefault(int(message["sequence"]), at)
    except Exception as exc:  # counted and reported: a refused socket is a figure, not a crash
        watcher.errors.append(f"{type(exc).__name__}: {exc}"[:200])


async def run_round(stack: Stack, token: str, deployment_id: int, instance_id: int, watchers: int, events: int,
                    rate: float) -> dict[str, Any]:
    urls = [f"ws://127.0.0.1:{port}/ws/deployments/" for port in web_ports(stack)]
    crowd = [Watcher() for _ in range(watchers)]
    ready, stop = asyncio.Semaphore(CONNECT_CONCURRENCY), asyncio.Event()
    flags = [asyncio.Event() for _ in crowd]
    started = time.monotonic()
    # several web processes: the sockets are spread over them in turn, as a load balancer would
    tasks = [asyncio.create_task(_watch(urls[n % len(urls)], token, deployment_id, w, ready, f, stop))
             for n, (w, f) in enumerate(zip(crowd, flags, strict=True))]
    while not all(f.is_set() or t.done() for f, t in zip(flags, tasks, strict=True)):
        await asyncio.sleep(0.2)
    connect_seconds = time.monotonic() - started
    open_sockets = sum(f.is_set() for f in flags)
    say(f"  {open_sockets}/{watchers} watchers connected in {connect_seconds:.1f} s; driving {events} transitions "
        f"at {rate:g}/s")
    out = stack.var_dir / f"stamps-{watchers}.json"
    driver = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bench.live_latency", "--drive", str(instance_id), "--events", str(events), "--rate", str(rate),
        "--out", str(out), cwd=ROOT, env={**stack.env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await driver.communicate()
    if driver.returncode != 0:
        raise RuntimeError(f"driver failed: {err.decode()[-2000:]}")
    await _drain(crowd)
    stop.set()
    await asyncio.gather(*tasks)
    stamps = {int(k): v for k, v in json.loads(out.read_text()).items()}
    latencies: list[float] = []
    lost = 0
    late_joiners = 0
    for watcher in crowd:
        if watcher.errors and not watcher.received:
            continue
        expected = [s for s in stamps if s > watcher.start_sequence]
        if len(expected) < len(stamps):
            late_joiners += 1
        for sequence in expected:
            at = watcher.received.get(sequence)
            if at is None:
                lost += 1
            else:
                latencies.append(at - stamps[sequence])
    errors = sorted({e for w in crowd for e in w.errors})
    latency = _scale.summary_ms(latencies)
    result: dict[str, Any] = {
        "watchers": watchers, "connected": open_sockets, "connect_seconds": round(connect_seconds, 2),
        "events": len(stamps), "rate_per_second": rate, "deliveries_expected": len(latencies) + lost,
        "delivered": len(latencies), "lost": lost, "latency_ms": latency,
        "errors": errors[:5], "load": _scale.load_average(),
    }
    say(f"  {watchers} watchers: p50 {latency['p50']} ms, p95 {latency['p95']} ms, "
        f"max {latency['max']} ms; lost {lost} of {result['deliveries_expected']}; errors {len(errors)}")
    return result


async def _drain(crowd: list[Watcher]) -> None:
    """Wait until the server has relayed what it still holds: no watcher received anything for DRAIN_QUIET seconds
    (a backlog is late, not lost), or DRAIN_LIMIT seconds passed."""
    deadline = time.monotonic() + DRAIN_LIMIT
    last_total, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(len(w.received) for w in crowd)
        if total != last_total:
            last_total, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since >= DRAIN_QUIET:
            return
        await asyncio.sleep(0.5)


def target_deployment() -> tuple[int, int]:
    """A deployment of connor's with one running instance, made for the benchmark (no provider involved: the driver
    moves it through the state machine only)."""
    from apps.accounts.models import Project, User
    from apps.clouds.models import CloudAccount
    from apps.deployments.models import Deployment, Instance

    project = Project.objects.all_tenants().get(slug="web")
    owner = User.objects.get(username="connor")
    account = CloudAccount.objects.all_tenants().get(slug="sim-east")
    deployment = Deployment.objects.all_tenants().create(organization=project.organization, project=project,
                                                         owner=owner, name="live-bench", state="active")
    instance = Instance.objects.all_tenants().create(
        organization=project.organization, project=project, deployment=deployment, owner=owner, name="live-bench-1",
        role="web", account=account, region=account.default_region, size="small", flavor_id="s1", vcpus=1,
        ram_mb=1024, state="running", provider_server_id="bench-live-1")
    return deployment.pk, instance.pk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", default="1,100,1000")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--compare-capacity", type=int, default=0,
                        help="run the largest round again with this channel-layer capacity")
    parser.add_argument("--web-processes", type=int, default=1, help="daphne processes the watchers are spread over")
    parser.add_argument("--tag", default="", help="save as bench/results/live_latency-<tag>.json")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.events, args.rate, args.out)
        return
    require_postgres()
    require_redis()
    counts = [int(n) for n in args.watchers.split(",")]
    limit = _scale.raise_open_files(max(counts) * 2 + 256)
    stack = Stack(database=DATABASE, redis_db=REDIS_DB, port=PORT, prefix=f"bench-live-{os.getpid()}")
    with stack:
        stack.prepare()
        _scale.django_for(stack)
        from django.conf import settings

        stack.start(workers=0, beat=False)
        start_more_web(stack, args.web_processes)
        time.sleep(3 if args.web_processes > 1 else 0)
        setup = print_setup(
            "live_latency", watchers=counts, web_processes=args.web_processes, events_per_round=args.events,
            rate=args.rate, open_files_limit=limit, channel_layer=_layer_config(settings.CHANNEL_LAYERS),
            server="daphne; watchers: one asyncio process (websockets); driver: its own process",
            load_at_start=_scale.load_average(), processes=stack.command_lines())
        token = _scale.token_for("connor")
        deployment_id, instance_id = target_deployment()
        from django.db import connections

        connections.close_all()
        results: dict[str, Any] = {}
        for count in counts:
            results[str(count)] = asyncio.run(run_round(stack, token, deployment_id, instance_id, count,
                                                        args.events, args.rate))
        if args.compare_capacity:
            # the largest round again with another channel-layer capacity (daphne restarted with it)
            restart_web(stack, {"SKYPORT_CHANNEL_CAPACITY": str(args.compare_capacity)})
            say(f"daphne restarted with channel-layer capacity {args.compare_capacity}")
            results[f"{counts[-1]}@capacity={args.compare_capacity}"] = asyncio.run(run_round(
                stack, token, deployment_id, instance_id, counts[-1], args.events, args.rate))
        dead = stack.alive()
        if dead:
            say(f"processes that exited: {dead}")
        for label, r in results.items():
            verdict(f"{label} watchers p95", r["latency_ms"]["p95"], TARGET_P95_MS, unit=" ms")
            verdict(f"{label} watchers lost", r["lost"], 0)
        setup["load_at_end"] = _scale.load_average()
        save(f"live_latency-{args.tag}" if args.tag else "live_latency", setup, results)


def web_ports(stack: Stack) -> list[int]:
    return [stack.port + n for n, name in enumerate(sorted(p for p in stack.processes if p.startswith("web")))]


def start_more_web(stack: Stack, count: int) -> None:
    """Daphne processes 2..count on the next ports (same settings, same channel layer)."""
    for n in range(1, count):
        stack._spawn(f"web{n + 1}", [str(ROOT / ".venv" / "bin" / "daphne"), "-b", "127.0.0.1", "-p",
                                     str(stack.port + n), "--proxy-headers", "portal.asgi:application"])


def restart_web(stack: Stack, env: dict[str, str]) -> None:
    """Stop daphne and start it again with `env` added (the worker and beat, if any, are left alone)."""
    import signal

    web = stack.processes.pop("web")
    os.killpg(web.pid, signal.SIGTERM)
    web.wait(30)
    stack._spawn("web", [str(ROOT / ".venv" / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(stack.port),
                         "--proxy-headers", "portal.asgi:application"], env={**stack.env, **env})
    stack.wait_ready()


def _layer_config(layers: dict[str, Any]) -> str:
    config = dict(layers["default"].get("CONFIG", {}))
    config.pop("hosts", None)
    return f"{layers['default']['BACKEND'].rsplit('.', 1)[-1]} {config}"


if __name__ == "__main__":
    main()
