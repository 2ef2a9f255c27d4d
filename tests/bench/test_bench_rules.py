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
