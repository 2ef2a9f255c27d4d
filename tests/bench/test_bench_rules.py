"""The benchmarks' own rules: each refuses, before touching anything, a set-up whose figures would mislead (SQLite;
eager Celery where it measures workers), and `python -m bench --record` writes the saved headline figures between
the markers of docs/performance.md and nowhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as runner
from bench import common

ROOT = Path(__file__).resolve().parents[2]
ALL = runner.BENCHMARKS
WITH_WORKERS = ["launch_throughput", "ec2_overhead", "freshness"]


def _run(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_TASK_ALWAYS_EAGER"}}
    return subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ALL)
def test_refuses_sqlite_and_creates_nothing(name, tmp_path):
    database = tmp_path / "bench.sqlite3"
    done = _run(name, DATABASE_URL=f"sqlite:///{database}", REDIS_URL="redis://127.0.0.1:6379/15")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused" in done.stderr and "PostgreSQL" in done.stderr
    assert not database.exists()


@pytest.mark.parametrize("name", WITH_WORKERS)
def test_refuses_eager_celery_before_connecting(name):
    # nothing listens on port 1: a benchmark that connected first would fail with another message
    done = _run(name, DATABASE_URL="postgres://postgres@127.0.0.1:1/skyport_bench_never",
                REDIS_URL="redis://127.0.0.1:1/0", CELERY_TASK_ALWAYS_EAGER="1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused" in done.stderr and "CELERY_TASK_ALWAYS_EAGER" in done.stderr


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (common.percentile(values, 50), common.percentile(values, 95), common.percentile(values, 100)) == (
        50.0, 95.0, 100.0)
    assert common.percentile([3.0], 95) == 3.0
    assert common.summary([])["n"] == 0


def test_record_writes_the_headline_rows_between_the_markers_only(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "list_scale.json").write_text(json.dumps({
        "setup": {"date": "2026-12-02 15:00:00 UTC"},
        "results": {"headline": [common.headline("first page p95 at 100k", 41.234, "< 100 ms", True)]},
    }))
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Before\n\n{runner.BEGIN}\nold table\n{runner.END}\n\n## After\nkept\n")
    monkeypatch.setattr(runner, "RESULTS", results)
    monkeypatch.setattr(runner, "DOC", doc)
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    runner.record()
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Before") and text.endswith("## After\nkept\n")
    assert "| list_scale | first page p95 at 100k | 41.23 | < 100 ms | met | 2026-12-02 15:00:00 UTC |" in text


def test_the_setup_line_never_shows_a_password():
    assert common._redacted("postgres://app:s3cret@db.example:5432/skyport") == "postgres://app@db.example:5432/skyport"
    assert "s3cret" not in common._redacted("redis://:s3cret@cache:6379/0")


def test_the_counting_proxy_counts_each_request_and_forwards_it_unchanged():
    import http.server
    import socketserver
    import threading
    import urllib.request

    class Upstream(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            return

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    upstream = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    seen: list[tuple[str, str]] = []
    with socketserver.TCPServer(("127.0.0.1", 0), None) as probe:  # a free port for the proxy
        port = probe.server_address[1]
    proxy = common.start_counting_proxy(port, upstream.server_address[1],
                                        lambda path, params, auth: seen.append((params["Action"][0], auth)))
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/?x=1", data=b"Action=DescribeInstances",
                                         headers={"Authorization": "AWS4 Credential=k/20261202/eu-west-1/ec2/"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"Action=DescribeInstances"
    finally:
        proxy.shutdown()
        upstream.shutdown()
    assert seen == [("DescribeInstances", "AWS4 Credential=k/20261202/eu-west-1/ec2/")]


def test_a_look_up_is_told_from_a_list():
    assert common.is_look_up({"Action": ["DescribeInstances"], "InstanceId.1": ["i-1"]})
    assert common.is_look_up({"Filter.1.Name": ["instance-id"], "Filter.1.Value.1": ["i-1"]})
    assert not common.is_look_up({"Filter.1.Name": ["instance-state-name"], "Filter.1.Value.1": ["running"]})
