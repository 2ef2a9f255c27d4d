"""What the benchmarks' clients share: a keep-alive API client per thread, and one token websocket that follows
every deployment event of the user's projects and notes when each deployment turned active (or failed)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.stack import HOST


class Client:
    """One keep-alive HTTP connection per thread, as a script or CLI would hold it."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        return conn

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Authorization": f"Token {self.token}", "Content-Type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=sent)
                response = conn.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


FAILED_STATES = ("failed", "partially_failed", "vetoed")


@dataclass
class Watcher:
    """Follows the project's deployments over one websocket (no watch: a member's socket receives every event of
    their projects) and notes when each became active, or ended failed. Run it in a thread; `ready` is set once the
    server said hello."""

    port: int
    token: str
    active_at: dict[int, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    events: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self, timeout: float = 30) -> None:
        threading.Thread(target=self.run, daemon=True).start()
        self.ready.wait(timeout)
        if self.error or not self.ready.is_set():
            raise SystemExit(f"websocket: {self.error or 'no hello from the server'}")

    def run(self) -> None:
        try:
            asyncio.run(self._follow())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    def wait_active(self, deployment: int, timeout: float) -> float:
        """The moment the deployment's `active` event arrived (time.monotonic()); raises if it failed or timed out."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while deployment not in self.active_at:
                if deployment in self.failed:
                    raise RuntimeError(f"deployment {deployment} {self.failed[deployment]}")
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    raise RuntimeError(f"deployment {deployment} not active after {timeout:.0f} s {self.error}")
                self.changed.wait(left)
            return self.active_at[deployment]

    async def _follow(self) -> None:
        import websockets

        url = f"ws://{HOST}:{self.port}/ws/deployments/"
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {self.token}"},
                                      max_queue=None) as socket:
            while not self.stop.is_set():
                try:
                    raw = await asyncio.wait_for(socket.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                now = time.monotonic()
                message = json.loads(raw)
                if message.get("type") == "hello":
                    self.ready.set()
                    continue
                if message.get("type") != "deployment.event":
                    continue
                self.events += 1
                state, deployment = message.get("state"), int(message["deployment"])
                if state == "active" or state in FAILED_STATES:
                    with self.changed:
                        if state == "active":
                            self.active_at.setdefault(deployment, now)
                        else:
                            self.failed.setdefault(deployment, f"{state}: {message.get('state_message', '')}")
                        self.changed.notify_all()
