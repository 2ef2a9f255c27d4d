"""What every benchmark shares: the set-up it prints first, the refusals (SQLite, eager Celery), percentiles, and
the results file that docs/performance.md is written from.

A benchmark is a module with a `main()`; it prints its set-up, measures, prints percentiles and ratios against a
baseline measured in the same run, and saves them to bench/results/<name>.json. It never asserts a time: the
test suite does not run it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def refuse(reason: str) -> None:
    """Stop with exit code 2 and the reason: the benchmark cannot mean anything in this set-up."""
    print(f"[bench] refused: {reason}", file=sys.stderr, flush=True)
    sys.exit(2)


def _redacted(url: str) -> str:
    """A service URL without its password: set-up lines are printed and saved."""
    if not url:
        return "(not set)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def require_postgres() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://", "pgsql://")):
        refuse("this benchmark measures PostgreSQL: set DATABASE_URL=postgres://... (SQLite numbers would mislead)")
    return url


def require_redis() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        refuse("this benchmark needs Redis (channel layer, broker, cache): set REDIS_URL=redis://...")
    return url


def require_real_workers() -> None:
    if os.environ.get("CELERY_TASK_ALWAYS_EAGER", "").lower() in {"1", "true", "yes", "on"}:
        refuse("this benchmark measures real Celery workers: unset CELERY_TASK_ALWAYS_EAGER")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("django", "djangorestframework", "channels", "channels-redis", "daphne", "celery", "psycopg",
                 "apache-libcloud", "moto", "redis"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def postgres_version(url: str) -> str:
    try:
        import psycopg

        parts = urlsplit(url)
        with psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                             user=parts.username or "postgres", dbname="postgres", connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:  # a set-up line, never a reason to stop
        return f"unknown ({type(exc).__name__})"


def print_setup(name: str, **details: Any) -> dict[str, Any]:
    """Print and return what the numbers depend on: machine, services, versions and the benchmark's own knobs."""
    database = os.environ.get("DATABASE_URL", "")
    setup: dict[str, Any] = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "database": _redacted(database) if database else "(not set)",
        "redis": _redacted(os.environ.get("REDIS_URL", "")),
        "versions": versions(),
        **details,
    }
    if database.startswith(("postgres://", "postgresql://", "pgsql://")):
        setup["postgresql"] = postgres_version(database)
    say(f"set-up of {name}:")
    for key, value in setup.items():
        if key == "benchmark":
            continue
        text = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
        say(f"  {key}: {text}")
    return setup


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Iterable[float]) -> dict[str, float]:
    data = list(values)
    return {"n": len(data), "p50": percentile(data, 50), "p95": percentile(data, 95),
            "max": max(data) if data else math.nan}


def save(name: str, setup: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json (set-up + results) and print where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "headline" not in results and VERDICTS:
        results = {**results, "headline": list(VERDICTS)}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"setup": setup, "results": results}, indent=2, default=str) + "\n")
    say(f"results saved to {path.relative_to(ROOT)}")
    return path


def verdict(label: str, value: float, target: float, *, higher_is_better: bool = False, unit: str = "") -> bool:
    """Print `label: value (target ...): met/missed` and return whether the target was met."""
    met = value >= target if higher_is_better else value <= target
    sign = "≥" if higher_is_better else "≤"
    say(f"{label}: {value:.2f}{unit} (target {sign} {target:g}{unit}): {'met' if met else 'MISSED'}")
    VERDICTS.append(headline(label, f"{value:.2f}{unit}", f"{sign} {target:g}{unit}", met))
    return met


# the verdicts printed so far: save() writes them as the results' headline rows unless the benchmark gave its own
VERDICTS: list[dict[str, Any]] = []


def headline(metric: str, value: float | str, target: str, met: bool) -> dict[str, Any]:
    """One row of the table in docs/performance.md (`python -m bench --record`): save it under results["headline"]."""
    shown = f"{value:.2f}" if isinstance(value, float) else str(value)
    return {"metric": metric, "value": shown, "target": target, "met": bool(met)}


def start_counting_proxy(port: int, upstream_port: int, count: Callable[[str, dict[str, list[str]], str], None],
                         host: str = "127.0.0.1") -> Any:
    """An HTTP proxy in front of a provider's API server (moto) that calls `count(path, params, authorization)` for
    every request before forwarding it, so provider calls are counted where they arrive. `params` holds the query
    string's and the form body's fields. Returns the server (call `shutdown()` to stop it)."""
    import http.client
    import http.server
    import socketserver
    import threading
    import urllib.parse

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
            count(self.path, params, self.headers.get("Authorization", ""))
            conn = http.client.HTTPConnection(host, upstream_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_DELETE = do_PUT = _forward

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # a client that hung up (the benchmark ending, a timed-out call) is not worth a traceback
            import sys

            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def is_look_up(params: dict[str, list[str]]) -> bool:
    """A DescribeInstances for given instances (by `InstanceId.N`, or filtered by `instance-id`), not a list."""
    if any(k.startswith("InstanceId.") for k in params):
        return True
    return any(k.startswith("Filter.") and k.endswith(".Name") and v == ["instance-id"] for k, v in params.items())
