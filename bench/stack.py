"""The production stack a benchmark measures: its own PostgreSQL database, its own Redis database and key prefix, and
daphne + Celery worker(s) + Celery beat as separate processes, started the way the Procfile starts them.

    with Stack(database="skyport_bench_launch", redis_db=3, port=8620) as stack:
        stack.prepare()                     # fresh database, migrate, demo seed
        stack.start(workers=2, concurrency=4, pool="threads")
        ... stack.base_url ...

Leaving the block stops every process it started (by process group) and drops the database.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from bench.common import PYTHON, ROOT, refuse, say

VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"


def _admin_connection(database_url: str) -> Any:
    import psycopg

    parts = urlsplit(database_url)
    return psycopg.connect(host=parts.hostname or HOST, port=parts.port or 5432, user=parts.username or "postgres",
                           password=parts.password, dbname="postgres", autocommit=True, connect_timeout=5)


def database_url(name: str) -> str:
    """The benchmark's database on the server DATABASE_URL points at (PostgreSQL on 127.0.0.1 by default)."""
    base = urlsplit(os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres")
    return base._replace(path=f"/{name}").geturl()


def recreate_database(url: str) -> None:
    from psycopg import sql

    name = urlsplit(url).path.strip("/")
    with _admin_connection(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str) -> None:
    from psycopg import sql

    name = urlsplit(url).path.strip("/")
    with _admin_connection(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def flush_redis(url: str) -> None:
    """Empty the benchmark's own Redis database: queued tasks or channel messages of an earlier run would count."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def add_worker_arguments(parser: Any) -> None:
    """--workers / --pool / --concurrency, defaulting to what `make serve` runs (SKYPORT_WORKERS, CELERY_POOL and
    CELERY_CONCURRENCY as the Procfile reads them)."""
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SKYPORT_WORKERS", 2)),
                        help="Celery worker processes (make serve's SKYPORT_WORKERS)")
    parser.add_argument("--pool", default=os.environ.get("CELERY_POOL", "threads"), choices=["threads", "prefork"],
                        help="Celery worker pool (the Procfile's CELERY_POOL)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("CELERY_CONCURRENCY", 4)),
                        help="threads (or child processes) per worker (the Procfile's CELERY_CONCURRENCY)")


def workers_label(args: Any) -> str:
    workers = f"Celery worker x{args.workers} (pool {args.pool}, concurrency {args.concurrency})"
    return f"daphne x1, {workers}, Celery beat x1"


@dataclass
class Stack:
    """One benchmark's processes and stores. Everything it names (database, Redis db, prefix, ports) is its own."""

    database: str
    redis_db: int
    port: int
    prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    keep_database: bool = False

    def __post_init__(self) -> None:
        self.database_url = database_url(self.database)
        redis_base = urlsplit(os.environ.get("REDIS_URL") or f"redis://{HOST}:6379/0")
        self.redis_url = redis_base._replace(path=f"/{self.redis_db}").geturl()
        self.prefix = self.prefix or f"{self.database}-{os.getpid()}"
        self.var_dir = Path(tempfile.mkdtemp(prefix=f"{self.database}-"))
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SKYPORT_REDIS_PREFIX": self.prefix,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "SKYPORT_ENABLE_SIM": "1",
            "SKYPORT_INPROCESS_SCHEDULER": "0",
            "SKYPORT_ALLOWED_PRIVATE_NETWORKS": "127.0.0.1/32",
            "SKYPORT_DEMO_URL": self.base_url,
            "SKYPORT_VAR_DIR": str(self.var_dir),
            "SKYPORT_IMAGE_DIR": str(self.var_dir / "images"),
            "SKYPORT_FERNET_KEYS": os.environ.get("SKYPORT_FERNET_KEYS") or _fernet_key(),
            "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-" + _fernet_key(),
            "ALLOWED_HOSTS": f"{HOST},localhost",
            "SKYPORT_TESTING": "0",
            "PYTHONPATH": str(ROOT),  # the checkout this benchmark belongs to, whatever the installed copy points at
            **self.extra_env,
        }
        self.env.pop("PYTEST_XDIST_WORKER", None)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # --- stores -------------------------------------------------------------------------------------------------

    def manage(self, *args: str, eager: bool = False) -> str:
        env = {**self.env, "CELERY_TASK_ALWAYS_EAGER": "1"} if eager else self.env
        done = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            refuse(f"manage.py {' '.join(args[:1])} failed: {done.stderr[-3000:]}")
        return done.stdout

    def prepare(self, *, seed: bool = True) -> None:
        """A fresh database and Redis db, migrated and (by default) seeded with the demo, inline."""
        started = time.monotonic()
        recreate_database(self.database_url)
        flush_redis(self.redis_url)
        self.manage("migrate", "--noinput")
        if seed:
            self.manage("seed_demo", eager=True)
        say(f"database {self.database} created, migrated{' and seeded' if seed else ''} in "
            f"{time.monotonic() - started:.1f} s")

    def shell(self, code: str) -> str:
        """Run Python in the project's Django set-up against the benchmark's database; returns what it printed."""
        return self.manage("shell", "-c", code)

    # --- processes ----------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.var_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        self.processes[name] = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, *, workers: int = 2, concurrency: int = 4, pool: str = "threads", beat: bool = True,
              worker_module: str = "", daphne: bool = True) -> None:
        """daphne, `workers` Celery workers of `concurrency` each (the Procfile's command line and `make serve`'s
        default: 2 processes of 4 threads), and beat.
        `worker_module` names a module imported by the worker before the app (a benchmark's provider adapter)."""
        if daphne:
            self._spawn("web", [str(VENV_BIN / "daphne"), "-b", HOST, "-p", str(self.port), "--proxy-headers",
                                "portal.asgi:application"])
        for index in range(workers):
            argv = ["-A", "portal", "worker", "-Q", "skyport", "-l", "warning", "-c", str(concurrency),
                    "--without-gossip", "--without-mingle", "-P", pool, "-n", f"bench{index}-{self.prefix}@%h"]
            if worker_module:
                code = (f"import {worker_module}; from celery.__main__ import main; import sys; "
                        f"sys.argv = ['celery', *{argv!r}]; main()")
                self._spawn(f"worker{index}", [PYTHON, "-c", code])
            else:
                self._spawn(f"worker{index}", [str(VENV_BIN / "celery"), *argv])
        if beat:
            self._spawn("beat", [str(VENV_BIN / "celery"), "-A", "portal", "beat", "-l", "warning", "-s",
                                 str(self.var_dir / "celerybeat-schedule")])
        if daphne:
            self.wait_ready()
        say(f"started {', '.join(self.processes)} (logs in {self.var_dir})")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    refuse(f"{name} exited with {process.returncode}: see {self.var_dir / (name + '.log')}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        refuse(f"/readyz on {self.base_url} never answered 200")

    def alive(self) -> list[str]:
        """Names of processes that have exited: a benchmark checks this before trusting its figures."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()

    def command_lines(self) -> dict[str, str]:
        return {name: shlex.join(p.args if isinstance(p.args, list) else [str(p.args)])[:200]
                for name, p in self.processes.items()}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if not self.keep_database:
            try:
                drop_database(self.database_url)
            except Exception as error:
                say(f"could not drop {self.database}: {type(error).__name__}")
            try:
                flush_redis(self.redis_url)
            except Exception as error:
                say(f"could not flush redis db {self.redis_db}: {type(error).__name__}")
        if exc[0] is None and not self.keep_database:
            shutil.rmtree(self.var_dir, ignore_errors=True)  # logs stay only when the run failed
