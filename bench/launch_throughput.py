"""Launch throughput on the sim cloud: PostgreSQL + Redis + daphne + real Celery workers + beat, separate processes.

    python -m bench.launch_throughput [--launches 400] [--clients 8] [--concurrency 2] [--workers 1]

Makes its own database (skyport_bench_launch), seeds the demo, makes the sim's build short (the point is the
portal, not the sim's fake boot time), then fires launches through `POST /api/v1/deployments/` from client threads
and follows them over one token websocket (`/ws/deployments/`, no watch: it receives every event of the project).
Measures request latency, request-to-running per launch and sustained launches/s; a baseline (`GET /api/v1/me/`
and `GET /healthz` at the same client concurrency, same server) is measured in the same run for the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.api import Client, Watcher
from bench.common import (
    percentile,
    print_setup,
    require_postgres,
    require_real_workers,
    require_redis,
    save,
    say,
    summary,
    verdict,
)
from bench.stack import Stack, add_worker_arguments, workers_label

NAME = "launch_throughput"
TARGET_PER_SECOND = 12.0
ITEM = "debian-12-server"


@dataclass
class Launch:
    index: int
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0
    deployment: int | None = None
    running: float | None = None
    error: str = ""


def prepare(stack: Stack, *, build_seconds: float, keep_hooks: bool) -> tuple[str, int]:
    """Room for every launch (no quotas, unlimited sim), a short sim build, and a write token for connor."""
    out = stack.shell(
        "from apps.accounts.models import User, Organization, Project; from apps.accounts import services; "
        "from apps.clouds.sim.models import SimCloud; from apps.deployments.models import Quota, Hook; "
        f"SimCloud.objects.update(durations={{'build': {build_seconds}, 'stop': 1, 'start': 1, 'delete': 1}}, "
        "quotas={}, capacity={}); "
        "Quota.objects.all_tenants().update(max_instances=None, max_vcpus=None, max_ram_mb=None, max_disk_gb=None); "
        + ("" if keep_hooks else "Hook.objects.all_tenants().update(is_enabled=False); ")
        + "u = User.objects.get(username='connor'); o = Organization.objects.all_tenants().get(slug='acme'); "
        "print(services.token_create(actor=u, organization=o, name='bench', scope='write')[1]); "
        "print(Project.objects.all_tenants().get(slug='web').pk)")
    secret, project = out.split()[-2:]
    return secret, int(project)


def baseline(client: Client, path: str, *, requests: int, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.monotonic()
        status, _body = client.request("GET", path)
        took = time.monotonic() - started
        if status == 200:
            with lock:
                latencies.append(took)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.monotonic() - started
    return {"path": path, "per_second": len(latencies) / elapsed, "ok": len(latencies),
            "latency_ms": {k: v * 1000 if k != "n" else v for k, v in summary(latencies).items()}}


def fire(client: Client, project: int, *, launches: int, clients: int, run: str) -> list[Launch]:
    results = [Launch(index=i) for i in range(launches)]

    def one(launch: Launch) -> None:
        body = {"project": project, "catalog_item": ITEM, "name": f"b{run}-{launch.index}"}
        launch.sent = time.monotonic()
        try:
            launch.status, answer = client.request("POST", "/api/v1/deployments/", body,
                                                   {"Idempotency-Key": f"{run}-{launch.index}"})
        except (http.client.HTTPException, OSError) as exc:
            launch.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            launch.answered = time.monotonic()
        # 200: the client retried on a dropped keep-alive connection and the server replayed this Idempotency-Key's
        # launch (the same deployment, made once)
        if launch.status in (200, 201) and isinstance(answer, dict) and "id" in answer:
            launch.deployment = int(answer["id"])
        else:
            launch.error = f"{launch.status}: {json.dumps(answer)[:300]}"

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, results))
    return results


def wait_running(watcher: Watcher, launches: list[Launch], timeout: float) -> None:
    wanted = {launch.deployment for launch in launches if launch.deployment is not None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not wanted <= set(watcher.active_at):
        time.sleep(0.2)
    for launch in launches:
        if launch.deployment is not None:
            launch.running = watcher.active_at.get(launch.deployment)


def steady_rate(times: list[float], *, trim: float = 0.1) -> float:
    """Launches/s between the 10th and 90th percentile of completion times: ramp-up and tail left out."""
    ordered = sorted(times)
    if len(ordered) < 10:
        return float("nan")
    low, high = int(len(ordered) * trim), int(len(ordered) * (1 - trim)) - 1
    span = ordered[high] - ordered[low]
    return (high - low) / span if span > 0 else float("nan")


def still_pending(client: Client, launches: list[Launch]) -> dict[str, int]:
    """For launches the websocket never reported active: where the API says they are."""
    states: dict[str, int] = {}
    for launch in launches:
        if launch.deployment is not None and launch.running is None:
            _status, body = client.request("GET", f"/api/v1/deployments/{launch.deployment}/")
            state = body.get("state", "?") if isinstance(body, dict) else "?"
            states[state] = states.get(state, 0) + 1
    return states


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.launch_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=int(os.environ.get("BENCH_LAUNCHES", 400)))
    parser.add_argument("--clients", type=int, default=8, help="client threads sending launches")
    add_worker_arguments(parser)
    parser.add_argument("--build-seconds", type=float, default=1.0, help="the sim's build duration")
    parser.add_argument("--baseline-requests", type=int, default=600)
    parser.add_argument("--keep-hooks", action="store_true", help="keep the demo's before-launch hook on")
    parser.add_argument("--port", type=int, default=8620)
    parser.add_argument("--database", default="skyport_bench_launch", help="created and dropped by the run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last running")
    return parser.parse_args()


def main() -> None:
    args = parse()
    stack = Stack(database=args.database, redis_db=3, port=args.port)
    os.environ.setdefault("DATABASE_URL", stack.database_url)
    os.environ.setdefault("REDIS_URL", stack.redis_url)
    require_postgres()
    require_redis()
    require_real_workers()
    with stack:
        stack.prepare()
        token, project = prepare(stack, build_seconds=args.build_seconds, keep_hooks=args.keep_hooks)
        stack.start(workers=args.workers, concurrency=args.concurrency, pool=args.pool)
        setup = print_setup(
            NAME, database=stack.database_url, redis=stack.redis_url,
            processes=workers_label(args),
            launches=args.launches, clients=args.clients, sim_build_seconds=args.build_seconds,
            before_launch_hooks="on" if args.keep_hooks else "off", load_before=os.getloadavg())
        client = Client(args.port, token)
        base_me = baseline(client, "/api/v1/me/", requests=args.baseline_requests, clients=args.clients)
        base_health = baseline(client, "/healthz", requests=args.baseline_requests, clients=args.clients)
        say(f"baseline GET /api/v1/me/: {base_me['per_second']:.1f} req/s, p50 {base_me['latency_ms']['p50']:.1f} ms")
        say(f"baseline GET /healthz: {base_health['per_second']:.1f} req/s, "
            f"p50 {base_health['latency_ms']['p50']:.1f} ms")

        watcher = Watcher(args.port, token)
        watcher.start()
        run = uuid.uuid4().hex[:6]
        started = time.monotonic()
        launches = fire(client, project, launches=args.launches, clients=args.clients, run=run)
        fired = time.monotonic() - started
        say(f"{args.launches} launch requests answered in {fired:.1f} s ({args.launches / fired:.1f} req/s)")
        wait_running(watcher, launches, args.timeout)
        watcher.stop.set()
        dead = stack.alive()
        load_after = os.getloadavg()

        ok = [launch for launch in launches if launch.deployment is not None]
        replayed = sum(1 for launch in ok if launch.status == 200)
        done = [launch for launch in ok if launch.running is not None]
        request_ms = [(launch.answered - launch.sent) * 1000 for launch in ok]
        to_running = [(launch.running - launch.sent) for launch in done if launch.running is not None]
        running_times = [launch.running for launch in done if launch.running is not None]
        first_sent = min(launch.sent for launch in launches)
        overall = len(done) / (max(running_times) - first_sent) if running_times else 0.0
        steady = steady_rate(running_times)
        errors = [launch.error for launch in launches if launch.error][:5]
        pending = still_pending(client, launches)
        results = {
            "launches": args.launches, "answered": len(ok), "replayed_after_retry": replayed,
            "reached_running": len(done),
            "not_running_by_api_state": pending, "first_errors": errors, "exited_processes": dead,
            "request_seconds_total": fired, "request_rate": args.launches / fired,
            "request_latency_ms": summary(request_ms),
            "request_to_running_s": summary(to_running),
            "launches_per_second_overall": overall, "launches_per_second_steady": steady,
            "baseline_me": base_me, "baseline_healthz": base_health,
            "ratio_launch_requests_to_me": (args.launches / fired) / base_me["per_second"],
            "websocket_events": watcher.events, "load_after": load_after,
        }
        say(f"answered: {len(ok)}/{args.launches} (replayed after a client retry: {replayed}); running: {len(done)}; "
            f"not seen running: {pending or 'none'}")
        if errors:
            say(f"first errors: {errors}")
        if dead:
            say(f"processes that exited: {dead}")
        say(f"request latency: p50 {percentile(request_ms, 50):.0f} ms, p95 {percentile(request_ms, 95):.0f} ms")
        say(f"request → running: p50 {percentile(to_running, 50):.2f} s, p95 {percentile(to_running, 95):.2f} s "
            f"(sim build {args.build_seconds:g} s)")
        say(f"launch requests: {args.launches / fired:.1f}/s = {results['ratio_launch_requests_to_me']:.2f}x the "
            f"GET /api/v1/me/ rate ({base_me['per_second']:.1f}/s)")
        say(f"launches reaching running: {overall:.2f}/s overall (first request → last running), "
            f"{steady:.2f}/s steady (10th-90th percentile)")
        verdict("sustained launches/s (steady)", steady if steady == steady else 0.0, TARGET_PER_SECOND,
                higher_is_better=True, unit="/s")
        save(NAME, setup, results)


if __name__ == "__main__":
    main()
