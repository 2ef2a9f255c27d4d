"""Following a deployment as it changes, over the live-events websocket (/ws/deployments/, token in the
`Authorization` header), with the API as the source of truth whenever the stream may have missed something.

The protocol (docs/api.md, "Live deployment events"): after `hello` the client sends `watch`; the answer `watching`
carries the deployment's current `sequence`; each `deployment.event` carries the next number. An event numbered
last + 1 is applied, one at or below last is a duplicate, one further ahead means events were missed: the
deployment is read again through the API. The same happens after every reconnect.

`wait_until` is what `--wait` uses: it stops at a goal (running, stopped, deleted, ...), and falls back to polling
the API when the websocket cannot be used. `watch` prints every event until the deployment is deleted and
reconnects with backoff (1 s doubling to 30 s) when the connection drops; close codes 4401/4403 mean the token is
refused, so it stops instead."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.cli import version
from apps.cli.client import Client
from apps.cli.errors import CliError, Unreachable
from apps.cli.progress import ProgressLine

WS_PATH = "/ws/deployments/"
PING_EVERY = 20.0  # the server expects a ping every 20 s to keep a watch fresh
POLL_EVERY = 2.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
CLOSE_REFUSED = (4401, 4403)

TRANSITIONAL = frozenset({"pending", "building", "stopping", "starting", "rebooting", "resizing", "deleting"})
ENDED_BADLY = frozenset({"partially_failed", "rejected", "vetoed", "cancelled", "deleted", "deleting"})


# --- sequence numbers -------------------------------------------------------------------------------------------
APPLY, IGNORE, RESYNC = "apply", "ignore", "resync"


def classify(last: int | None, sequence: Any) -> str:
    """What to do with an event numbered `sequence` when `last` was the last one applied."""
    if not isinstance(sequence, int) or last is None:
        return RESYNC
    if sequence <= last:
        return IGNORE
    return APPLY if sequence == last + 1 else RESYNC


class Tracker:
    """The client's copy of one deployment (the API's detail), kept current by events."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.detail = detail

    @property
    def id(self) -> int:
        return int(self.detail["id"])

    @property
    def sequence(self) -> int | None:
        value = self.detail.get("sequence")
        return value if isinstance(value, int) else None

    @property
    def state(self) -> str:
        return str(self.detail.get("state") or "")

    def instance_name(self, instance_id: Any) -> str:
        for instance in self.detail.get("instances") or []:
            if instance.get("id") == instance_id:
                return str(instance.get("name"))
        return f"server {instance_id}"

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply an event; False when it names a server this copy does not know (read the deployment again)."""
        if event.get("instance") is not None and event.get("instance_state"):
            for instance in self.detail.get("instances") or []:
                if instance.get("id") == event["instance"]:
                    instance["state"] = event["instance_state"]
                    break
            else:
                return False
        if event.get("state"):
            self.detail["state"] = event["state"]
        self.detail["sequence"] = event["sequence"]
        return True

    def resync(self, client: Client) -> None:
        self.detail = client.request("GET", f"deployments/{self.id}/")


# --- goals of --wait --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """What a `--wait` waits for: every live server settled (and in `want`, when given), or the deployment gone."""

    count: str  # the server state counted in the progress line ("2/3 running")
    want: str = ""  # every live server must end in this state ("" = any settled state)
    deleted: bool = False

    def progress(self, detail: dict[str, Any]) -> str:
        instances = detail.get("instances") or []
        pool = instances if self.deleted else [i for i in instances if i.get("state") != "deleted"]
        done = sum(1 for i in pool if i.get("state") == self.count)
        others = Counter(str(i.get("state")) for i in pool if i.get("state") != self.count)
        line = f"{detail.get('name')}  {detail.get('state')}  {done}/{len(pool)} {self.count}"
        line += "".join(f", {n} {state}" for state, n in sorted(others.items()))
        return line + ("  waiting for an approver" if detail.get("state") == "pending_approval" else "")

    def outcome(self, detail: dict[str, Any]) -> str | None:
        """'reached', 'failed', or None while it is still on its way."""
        state = detail.get("state")
        live = [i for i in detail.get("instances") or [] if i.get("state") != "deleted"]
        if self.deleted:
            if state in ("deleted", "cancelled"):
                return "reached"
            return "failed" if state in ("partially_failed", "rejected", "vetoed") else None
        if state in ENDED_BADLY:
            return "failed"
        if state != "active" or any(i.get("state") in TRANSITIONAL for i in live):
            return None
        if self.want and any(i.get("state") != self.want for i in live):
            return None
        return "reached"


GOALS: dict[str, Goal] = {
    "launch": Goal(count="running"),
    "start": Goal(count="running", want="running"),
    "stop": Goal(count="stopped", want="stopped"),
    "reboot": Goal(count="running"),
    "resize": Goal(count="running"),
    "delete": Goal(count="deleted", deleted=True),
}


def failure(detail: dict[str, Any]) -> CliError:
    """Why a deployment did not get where it was asked to: its state, its message, its servers' errors."""
    hints = [f"  {i.get('name')}: {i.get('error')}" for i in detail.get("instances") or [] if i.get("error")]
    message = f"{detail.get('name')} (deployment {detail.get('id')}) is {detail.get('state')}"
    if detail.get("state_message"):
        message += f": {detail['state_message']}"
    return CliError(message, hints=hints)


# --- waiting ----------------------------------------------------------------------------------------------------
class LiveUnavailable(Exception):
    """The websocket could not be used (refused, dropped, not there): poll the API instead."""


class Deadline(Exception):
    """The time given to --wait is up (not a TimeoutError: that one is an OSError, a network failure)."""


def _check(client: Client, goal: Goal, tracker: Tracker, progress: ProgressLine) -> bool:
    """Show the progress; True at the goal. A failure is raised with the servers' errors, which events do not
    carry: the deployment is read again for them."""
    progress.update(goal.progress(tracker.detail))
    result = goal.outcome(tracker.detail)
    if result == "failed":
        progress.done()
        tracker.resync(client)
        raise failure(tracker.detail)
    return result == "reached"


def _timed_out(tracker: Tracker, timeout: float) -> CliError:
    detail = tracker.detail
    return CliError(
        f"timed out after {timeout:g} s waiting for {detail.get('name')} (deployment {tracker.id}): it is "
        f"{detail.get('state')}",
        hints=[f"  it goes on in the background: follow it with `skyport deployments watch {tracker.id}`"],
    )


def wait_until(client: Client, detail: dict[str, Any], goal: Goal, *, timeout: float,
               progress: ProgressLine) -> dict[str, Any]:
    """Follow the deployment until `goal` is reached (the final detail, read through the API), it fails
    (CliError with the reason) or `timeout` seconds pass (CliError)."""
    tracker = Tracker(detail)
    deadline = time.monotonic() + timeout
    if not _check(client, goal, tracker, progress):
        try:
            asyncio.run(_wait_live(client, tracker, goal, deadline, progress))
        except LiveUnavailable as exc:
            progress.note(f"live updates unavailable ({exc}); polling every {POLL_EVERY:g} s")
            _wait_polling(client, tracker, goal, deadline, progress, timeout)
        except Deadline:
            progress.done()
            raise _timed_out(tracker, timeout) from None
    progress.done()
    return client.request("GET", f"deployments/{tracker.id}/")


def _wait_polling(client: Client, tracker: Tracker, goal: Goal, deadline: float, progress: ProgressLine,
                  timeout: float) -> None:
    while True:
        tracker.resync(client)
        if _check(client, goal, tracker, progress):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            progress.done()
            raise _timed_out(tracker, timeout)
        time.sleep(min(POLL_EVERY, remaining))


async def _wait_live(client: Client, tracker: Tracker, goal: Goal, deadline: float,
                     progress: ProgressLine) -> None:
    from websockets.exceptions import WebSocketException

    try:
        async with _connect(client) as socket:
            await _handshake(client, socket, tracker.id)
            async for message in _messages(socket, deadline):
                if message.get("deployment") != tracker.id:
                    continue
                kind = message.get("type")
                if kind == "watching" and message.get("sequence") != tracker.sequence:
                    tracker.resync(client)
                elif kind == "deployment.event":
                    verdict = classify(tracker.sequence, message.get("sequence"))
                    if verdict == RESYNC or (verdict == APPLY and not tracker.apply(message)):
                        tracker.resync(client)
                elif kind == "error":
                    raise CliError(f"deployment {tracker.id}: {message.get('error')}")
                if _check(client, goal, tracker, progress):
                    return
    except (OSError, WebSocketException, LiveProtocolError) as exc:
        raise LiveUnavailable(_describe(exc)) from None


# --- the socket -------------------------------------------------------------------------------------------------
class LiveProtocolError(Exception):
    """The server said something the protocol does not allow (or ended the session)."""


def _connect(client: Client) -> Any:
    from websockets.asyncio.client import connect

    return connect(client.ws_url(WS_PATH), additional_headers=client.auth_header(), open_timeout=15,
                   user_agent_header=f"skyport-cli/{version()}")


def _decode(raw: Any) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise LiveProtocolError("a message that is not JSON") from None
    return message if isinstance(message, dict) else {}


async def _handshake(client: Client, socket: Any, deployment_id: int) -> None:
    hello = _decode(await asyncio.wait_for(socket.recv(), timeout=15))
    if hello.get("type") != "hello":
        raise LiveProtocolError(f"expected hello, got {hello.get('type')}")
    client.record("WS", WS_PATH, 101)
    await socket.send(json.dumps({"type": "watch", "deployment": deployment_id}))


async def _messages(socket: Any, deadline: float | None) -> Any:
    """The server's messages as dicts, with a ping every 20 s; Deadline at `deadline`."""
    next_ping = time.monotonic() + PING_EVERY
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise Deadline
        wait = next_ping - now if deadline is None else min(next_ping, deadline) - now
        try:
            raw = await asyncio.wait_for(socket.recv(), timeout=max(wait, 0.01))
        except TimeoutError:
            if time.monotonic() >= next_ping:
                await socket.send(json.dumps({"type": "ping"}))
                next_ping = time.monotonic() + PING_EVERY
            continue
        message = _decode(raw)
        if message.get("type") == "session.ended":
            raise SessionEnded(str(message.get("reason") or "session ended"))
        yield message


class SessionEnded(LiveProtocolError):
    """The server ended the socket's session (token revoked, access changed): reconnecting will not help."""


def _close_code(exc: BaseException) -> int | None:
    received = getattr(exc, "rcvd", None)
    return getattr(received, "code", None)


def _describe(exc: BaseException) -> str:
    code = _close_code(exc)
    if code is not None:
        return f"closed with code {code}"
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} on the websocket handshake"
    return str(exc) or type(exc).__name__


# --- watching ---------------------------------------------------------------------------------------------------
@dataclass
class WatchPrinter:
    """Where `watch` reports: events and resyncs (stdout), notes about the connection (stderr)."""

    event: Callable[[Tracker, dict[str, Any]], None]
    resync: Callable[[Tracker, str], None]
    note: Callable[[str], None]


def watch(client: Client, detail: dict[str, Any], printer: WatchPrinter) -> None:
    """Print every event of the deployment until it is deleted. Returns then; raises CliError when the token is
    refused or the deployment cannot be seen any more."""
    tracker = Tracker(detail)
    if tracker.state == "deleted":
        return
    asyncio.run(_watch(client, tracker, printer))


async def _watch(client: Client, tracker: Tracker, printer: WatchPrinter) -> None:
    from websockets.exceptions import InvalidStatus, WebSocketException

    backoff, reconnecting = BACKOFF_FIRST, False
    while True:
        try:
            async with _connect(client) as socket:
                await _handshake(client, socket, tracker.id)
                if reconnecting:
                    printer.note("reconnected")
                backoff = BACKOFF_FIRST
                if await _watch_session(client, socket, tracker, printer, resync_first=reconnecting):
                    return
        except SessionEnded as exc:
            raise CliError(f"the server ended the live session: {exc}",
                           hints=["  the token may have been revoked: run `skyport login` again"]) from None
        except (OSError, WebSocketException, LiveProtocolError, Unreachable) as exc:
            code = _close_code(exc)
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if code in CLOSE_REFUSED or (isinstance(exc, InvalidStatus) and status in (401, 403)):
                raise CliError(f"the server refused the live connection ({_describe(exc)})",
                               hints=["  the token is no longer valid here: run `skyport login` again"]) from None
            printer.note(f"connection lost ({_describe(exc)}); reconnecting in {backoff:g} s")
        await asyncio.sleep(backoff)
        backoff, reconnecting = min(backoff * 2, BACKOFF_MAX), True


async def _watch_session(client: Client, socket: Any, tracker: Tracker, printer: WatchPrinter, *,
                         resync_first: bool) -> bool:
    """One connection's worth of events; True when the deployment is deleted."""
    async for message in _messages(socket, None):
        kind = message.get("type")
        if kind == "access.changed":
            tracker.resync(client)  # a 404 here ends the watch: the deployment is out of reach now
            printer.resync(tracker, "access changed")
        elif message.get("deployment") != tracker.id:
            continue
        elif kind == "watching":
            if resync_first or message.get("sequence") != tracker.sequence:
                before = tracker.sequence
                tracker.resync(client)
                printer.resync(tracker, "after reconnecting" if resync_first else f"was at event {before}")
            resync_first = False
        elif kind == "deployment.event":
            verdict = classify(tracker.sequence, message.get("sequence"))
            if verdict == APPLY and tracker.apply(message):
                printer.event(tracker, message)
            elif verdict != IGNORE:
                missed = f"missed events after {tracker.sequence}"
                tracker.resync(client)
                printer.resync(tracker, missed)
        elif kind == "error":
            raise CliError(f"deployment {tracker.id}: {message.get('error')}")
        if tracker.state == "deleted":
            return True
    return False
