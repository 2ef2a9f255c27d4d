"""Instance and deployment lists at 1k, 10k and 100k instances: first-page latency (p95) and query count, for an
organisation admin (sam: sees the whole organisation) and a member (connor: sees his two projects only).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/5 \
        .venv/bin/python -m bench.list_scale [--sizes 1000,10000,100000] [--repeat 30]

A fresh database (skyport_bench_scale) is migrated and seeded with the demo, then grown in place to each size with
bulk inserts spread over 20 projects, 200 members and the organisation's three account-regions (a quarter of the
deployments deleted, as a long-lived organisation has). At each size every list is measured twice:

- in process, through Django's test Client with CaptureQueriesContext: the query count and the view's time;
- over HTTP through a real daphne (its own process, token for the API, the Client's session cookie for pages).

The smallest size is the baseline; the ratios say whether a list grows with the table.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import urllib.request
from typing import Any

from bench import _scale
from bench.common import print_setup, require_postgres, require_redis, save, say, verdict
from bench.stack import Stack

DATABASE = "skyport_bench_scale"
REDIS_DB = 5
PORT = 8630
PROJECTS = 20
MEMBERS = 200
TARGET_MS = 100.0
# (label, path, persona): the first page of each list as each persona opens it
LISTS: list[tuple[str, str, str]] = [
    ("api instances (admin)", "/api/v1/instances/", "sam"),
    ("api instances (member)", "/api/v1/instances/", "connor"),
    ("api instances running (admin)", "/api/v1/instances/?state=running", "sam"),
    ("api deployments (admin)", "/api/v1/deployments/", "sam"),
    ("api deployments (member)", "/api/v1/deployments/", "connor"),
    ("page deployments, everyone's (admin)", "/deployments/?owner=all", "sam"),
    ("page deployments, everyone's (member)", "/deployments/?owner=all", "connor"),
    ("page deployments, own (member)", "/deployments/", "connor"),
]


# --- seeding ----------------------------------------------------------------------------------------------------------
def _people() -> tuple[Any, list[Any], dict[int, list[Any]], list[tuple[Any, str]]]:
    """The organisation's projects and members (created once), and where its servers may run."""
    from apps.accounts.models import Membership, Organization, Project, User
    from apps.clouds.models import CloudAccount

    org = Organization.objects.all_tenants().get(slug="acme")
    have = {p.slug for p in Project.objects.all_tenants().filter(organization=org)}
    Project.objects.all_tenants().bulk_create([
        Project(organization=org, name=f"Team {n}", slug=f"team-{n}")
        for n in range(PROJECTS) if f"team-{n}" not in have
    ][: max(0, PROJECTS - len(have))])
    projects = list(Project.objects.all_tenants().filter(organization=org).order_by("pk"))
    if not User.objects.filter(username="bench-member-0").exists():
        users = User.objects.bulk_create([
            User(username=f"bench-member-{n}", email=f"bench-member-{n}@example.com", password="!")
            for n in range(MEMBERS)
        ])
        rng = random.Random(7)
        Membership.objects.all_tenants().bulk_create([
            Membership(user=user, organization=org, project=project, role="member")
            for user in users for project in rng.sample(projects, 2)
        ])
    owners: dict[int, list[Any]] = {}
    for membership in Membership.objects.all_tenants().filter(project__in=projects, role="member").select_related(
            "user"):
        owners.setdefault(membership.project_id, []).append(membership.user)
    places = [(account, region) for account in CloudAccount.objects.all_tenants().filter(organization=org)
              for region in account.all_regions]
    return org, projects, owners, places


def grow(instances_wanted: int) -> int:
    """Add deployments (1-3 servers each) until the organisation has `instances_wanted` bench instances."""
    from django.db import connection

    from apps.deployments.models import Deployment, Instance

    org, projects, owners, places = _people()
    have = Instance.objects.all_tenants().filter(name__startswith="bench-").count()
    rng = random.Random(have + 11)
    batch_deployments: list[Any] = []
    plan: list[int] = []
    while have + sum(plan) < instances_wanted:
        project = rng.choice(projects)
        owner = rng.choice(owners.get(project.pk) or owners[projects[0].pk])
        deleted = rng.random() < 0.25
        state = "deleted" if deleted else rng.choice(["active"] * 18 + ["partially_failed", "provisioning"])
        batch_deployments.append(Deployment(organization=org, project=project, owner=owner, created_by=owner,
                                            name=f"bench-{have + sum(plan)}", state=state, sequence=3))
        plan.append(min(rng.randint(1, 3), instances_wanted - have - sum(plan)))
    made = 0
    for start in range(0, len(batch_deployments), 2000):
        chunk = Deployment.objects.all_tenants().bulk_create(batch_deployments[start:start + 2000])
        rows = []
        for deployment, count in zip(chunk, plan[start:start + 2000], strict=True):
            account, region = rng.choice(places)
            for index in range(1, count + 1):
                state = "deleted" if deployment.state == "deleted" else rng.choice(["running"] * 4 + ["stopped"])
                rows.append(Instance(
                    organization=org, project=deployment.project, deployment=deployment, owner=deployment.owner,
                    name=f"bench-{deployment.pk}-web-{index}", role="web", index=index, account=account,
                    region=region, size="small", flavor_id="s1", vcpus=1, ram_mb=1024, disk_gb=10,
                    price_per_hour="0.01200", provider_server_id=f"bench-{deployment.pk}-{index}", state=state,
                ))
        Instance.objects.all_tenants().bulk_create(rows, batch_size=2000)
        made += len(rows)
    with connection.cursor() as cursor:  # spread creation over a year, newest last, as a real history would be
        cursor.execute("UPDATE deployments_deployment SET created_at = TIMESTAMPTZ '2026-01-01' + id * INTERVAL "
                       "'5 minutes' WHERE name LIKE 'bench-%%'")
        cursor.execute("ANALYZE")
    return made


# --- measuring --------------------------------------------------------------------------------------------------------
def clients() -> dict[str, Any]:
    from django.test import Client

    from apps.accounts.models import User

    found = {}
    for username in ("sam", "connor"):
        client = Client()
        client.force_login(User.objects.get(username=username))
        found[username] = client
    return found


def measure_in_process(client: Any, path: str, repeat: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, counts, slowest = [], [], []
    for attempt in range(repeat + 3):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
        if attempt >= 3:  # warm-up: the first requests fill caches (access, templates)
            times.append(elapsed)
            counts.append(len(queries.captured_queries))
            slowest = sorted(queries.captured_queries, key=lambda q: -float(q["time"]))[:2]
    return {"time_ms": _scale.summary_ms(times), "queries": max(counts), "queries_min": min(counts),
            "slowest_queries": [{"ms": round(float(q["time"]) * 1000, 2), "sql": q["sql"][:300]} for q in slowest]}


def measure_http(url: str, headers: dict[str, str], repeat: int) -> dict[str, Any]:
    times, size = [], 0
    for attempt in range(repeat + 3):
        request = urllib.request.Request(url, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        elapsed = time.perf_counter() - started
        if attempt >= 3:
            times.append(elapsed)
            size = len(body)
    return {"time_ms": _scale.summary_ms(times), "bytes": size}


def measure_size(stack: Stack, size: int, repeat: int, tokens: dict[str, str],
                 sessions: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, path, persona in LISTS:
        inproc = measure_in_process(sessions[persona], path, repeat)
        if path.startswith("/api/"):
            headers = {"Authorization": f"Token {tokens[persona]}", "Accept": "application/json"}
        else:
            headers = {"Cookie": f"sessionid={sessions[persona].cookies['sessionid'].value}"}
        http = measure_http(stack.base_url + path, headers, repeat)
        results[label] = {"in_process": inproc, "http": http}
        say(f"  {size:>6} {label:<40} in-process p95 {inproc['time_ms']['p95']:>7.1f} ms, {inproc['queries']:>2} "
            f"queries | daphne p95 {http['time_ms']['p95']:>7.1f} ms ({http['bytes']} bytes)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    require_postgres()
    require_redis()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    stack = Stack(database=DATABASE, redis_db=REDIS_DB, port=PORT, prefix=f"bench-scale-{os.getpid()}",
                  extra_env={"ALLOWED_HOSTS": "127.0.0.1,localhost,testserver"}, keep_database=args.keep)
    with stack:
        stack.prepare()
        stack.manage("collectstatic", "--noinput", "--verbosity", "0")  # pages use the hashed static names
        _scale.django_for(stack)
        stack.start(workers=0, beat=False)
        setup = print_setup("list_scale", sizes=sizes, repeat=args.repeat, projects=PROJECTS, members=MEMBERS,
                            server="daphne, 1 process, on the same 2 cores", load_at_start=_scale.load_average(),
                            processes=stack.command_lines())
        tokens = {name: _scale.token_for(name) for name in ("sam", "connor")}
        sessions = clients()
        results: dict[str, Any] = {}
        for size in sizes:
            started = time.monotonic()
            grow(size)
            say(f"{size} instances in the database (seeded in {time.monotonic() - started:.1f} s); "
                f"load {_scale.load_average()}")
            results[str(size)] = measure_size(stack, size, args.repeat, tokens, sessions)
        if stack.alive():
            say(f"processes that exited: {stack.alive()}")
        report(results, sizes)
        setup["load_at_end"] = _scale.load_average()
        save("list_scale", setup, results)


def report(results: dict[str, Any], sizes: list[int]) -> None:
    base, top = str(sizes[0]), str(sizes[-1])
    for label, _path, _persona in LISTS:
        first, last = results[base][label], results[top][label]
        ratio = last["http"]["time_ms"]["p95"] / max(first["http"]["time_ms"]["p95"], 0.001)
        say(f"{label}: queries {first['in_process']['queries']} at {base} → {last['in_process']['queries']} at "
            f"{top}; daphne p95 x{ratio:.2f}")
        verdict(f"{label} at {top}, daphne p95", last["http"]["time_ms"]["p95"], TARGET_MS, unit=" ms")


if __name__ == "__main__":
    main()
