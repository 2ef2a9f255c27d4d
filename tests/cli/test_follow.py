"""Following a deployment: the sequence-number rules, the goals of --wait, and the websocket loop against a scripted
server on loopback that plays the live-events protocol (hello, watching, events) and serves the deployment's REST
detail on the same port. The real server never skips a number or drops a socket on demand; a scripted one can, so
duplicates, gaps, reconnects and refusals are checked here (tests/cli/test_live.py follows the real server)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from apps.cli.client import Client
from apps.cli.errors import CliError
from apps.cli.follow import APPLY, GOALS, IGNORE, RESYNC, Tracker, WatchPrinter, classify, wait_until, watch
from apps.cli.progress import ProgressLine


def detail(sequence: int, state: str, *servers: tuple[int, str], error: str = "") -> dict[str, Any]:
    return {"id": 42, "name": "shop", "state": state, "state_message": "", "sequence": sequence,
            "instances": [{"id": pk, "name": f"shop-{pk}", "state": s, "error": error if s == "error" else ""}
                          for pk, s in servers]}


def event(sequence: int, state: str, instance: int | None = None, instance_state: str | None = None,
          previous: str | None = None, deployment: int = 42, kind: str = "transition") -> dict[str, Any]:
    return {"type": "deployment.event", "deployment": deployment, "project": 1, "sequence": sequence,
            "event": kind if instance else "state", "state": state, "instance": instance,
            "instance_state": instance_state, "previous": previous, "operation": None}


# --- rules --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("last, sequence, verdict", [
    (5, 6, APPLY), (5, 5, IGNORE), (5, 3, IGNORE), (5, 7, RESYNC), (5, 50, RESYNC), (None, 6, RESYNC),
    (5, "6", RESYNC), (5, None, RESYNC),
])
def test_classify(last, sequence, verdict):
    assert classify(last, sequence) == verdict


def test_tracker_applies_events_and_asks_for_a_resync_for_unknown_servers():
    tracker = Tracker(detail(5, "provisioning", (1, "building"), (2, "building")))
    assert tracker.apply(event(6, "provisioning", 1, "running", "building"))
    assert (tracker.sequence, [i["state"] for i in tracker.detail["instances"]]) == (6, ["running", "building"])
    assert tracker.apply(event(7, "deleting"))
    assert tracker.state == "deleting"
    assert not tracker.apply(event(8, "deleting", 99, "deleting", "running"))
    assert tracker.sequence == 7  # not applied


@pytest.mark.parametrize("goal, current, outcome", [
    ("launch", detail(4, "provisioning", (1, "running"), (2, "building")), None),
    ("launch", detail(5, "active", (1, "running"), (2, "running")), "reached"),
    ("launch", detail(5, "pending_approval"), None),
    ("launch", detail(5, "vetoed"), "failed"),
    ("launch", detail(5, "partially_failed", (1, "running"), (2, "error")), "failed"),
    ("stop", detail(5, "active", (1, "stopped"), (2, "stopping")), None),
    ("stop", detail(5, "active", (1, "stopped"), (2, "stopped"), (3, "deleted")), "reached"),
    ("start", detail(5, "active", (1, "running"), (2, "stopped")), None),
    ("reboot", detail(5, "active", (1, "rebooting")), None),
    ("reboot", detail(5, "active", (1, "running"), (2, "stopped")), "reached"),  # a stopped one is not rebooted
    ("resize", detail(5, "active", (1, "stopped")), "reached"),
    ("resize", detail(5, "deleting", (1, "deleting")), "failed"),
    ("delete", detail(5, "deleting", (1, "deleted"), (2, "deleting")), None),
    ("delete", detail(5, "deleted", (1, "deleted"), (2, "deleted")), "reached"),
    ("delete", detail(5, "cancelled"), "reached"),  # a request deleted before launch is cancelled
])
def test_goals(goal, current, outcome):
    assert GOALS[goal].outcome(current) == outcome


def test_goal_progress_counts_servers():
    current = detail(5, "provisioning", (1, "running"), (2, "building"), (3, "pending"), (4, "deleted"))
    assert GOALS["launch"].progress(current) == "shop  provisioning  1/3 running, 1 building, 1 pending"
    assert GOALS["delete"].progress(current) == "shop  provisioning  1/4 deleted, 1 building, 1 pending, 1 running"
    assert GOALS["launch"].progress(detail(2, "pending_approval")).endswith("waiting for an approver")


# --- a scripted server --------------------------------------------------------------------------------------------
Script = Callable[[ServerConnection], Awaitable[None]]


class Scripted:
    """One port: REST details under /api/v1/deployments/42/ (one answer per GET, from `details`) and the websocket,
    each connection running the next of `scripts`."""

    def __init__(self) -> None:
        self.details: list[dict[str, Any]] = []
        self.scripts: list[Script] = []
        self.rest_calls = 0
        self.connections = 0
        self.watched: list[Any] = []
        self.url = ""

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/api/"):
            return None  # the websocket handshake
        self.rest_calls += 1
        body = json.dumps(self.details.pop(0)).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(200, "OK", headers, body)

    async def handler(self, socket: ServerConnection) -> None:
        self.connections += 1
        script = self.scripts.pop(0)
        await socket.send(json.dumps({"type": "hello"}))
        self.watched.append(json.loads(await socket.recv()))
        await script(socket)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Any:
        return await serve(state.handler, "127.0.0.1", 0, process_request=state.process_request)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield state
    server.close()
    asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def sends(*messages: dict[str, Any], close: int | None = None, then_wait: bool = True) -> Script:
    async def script(socket: ServerConnection) -> None:
        for message in messages:
            await socket.send(json.dumps(message))
        if close is not None:
            await socket.close(close)
        elif then_wait:
            await socket.wait_closed()

    return script


class Printed:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def printer(self) -> WatchPrinter:
        return WatchPrinter(
            event=lambda t, e: self.lines.append(f"event {e['sequence']} {t.state}"),
            resync=lambda t, why: self.lines.append(f"resync {t.sequence} {t.state} ({why})"),
            note=lambda text: self.lines.append(f"note {text}"),
        )


def test_watch_applies_in_order_ignores_duplicates_and_resyncs_after_a_gap(scripted):
    scripted.scripts.append(sends(
        {"type": "watching", "deployment": 42, "sequence": 5, "state": "active"},
        event(6, "active", 1, "stopping", "running"),
        event(6, "active", 1, "stopping", "running"),  # a duplicate
        event(1, "active", deployment=99),  # somebody else's deployment
        event(9, "deleting", 1, "deleting", "stopping"),  # 7 and 8 were missed
        event(10, "deleted", 1, "deleted", "deleting"),
    ))
    scripted.details.append(detail(9, "deleting", (1, "deleting")))
    printed = Printed()
    watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), printed.printer())
    assert printed.lines == [
        "event 6 active",
        "resync 9 deleting (missed events after 6)",
        "event 10 deleted",
    ]
    assert scripted.rest_calls == 1
    assert scripted.watched == [{"type": "watch", "deployment": 42}]


def test_watch_resyncs_when_the_watching_answer_is_ahead(scripted):
    scripted.scripts.append(sends({"type": "watching", "deployment": 42, "sequence": 8, "state": "deleted"}))
    scripted.details.append(detail(8, "deleted", (1, "deleted")))
    printed = Printed()
    watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), printed.printer())
    assert printed.lines == ["resync 8 deleted (was at event 5)"]


def test_watch_reconnects_after_a_drop_and_resyncs(scripted):
    scripted.scripts.append(sends({"type": "watching", "deployment": 42, "sequence": 5, "state": "active"},
                                  close=1011))
    scripted.scripts.append(sends({"type": "watching", "deployment": 42, "sequence": 7, "state": "deleting"},
                                  event(8, "deleted", 1, "deleted", "deleting")))
    scripted.details.append(detail(7, "deleting", (1, "deleting")))
    printed = Printed()
    watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), printed.printer())
    assert printed.lines == [
        "note connection lost (closed with code 1011); reconnecting in 1 s",
        "note reconnected",
        "resync 7 deleting (after reconnecting)",
        "event 8 deleted",
    ]
    assert scripted.connections == 2


@pytest.mark.parametrize("code", [4401, 4403])
def test_watch_stops_when_the_token_is_refused(scripted, code):
    scripted.scripts.append(sends(close=code))
    with pytest.raises(CliError, match=f"refused the live connection \\(closed with code {code}\\)"):
        watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), Printed().printer())
    assert scripted.connections == 1


def test_watch_stops_when_the_session_ends(scripted):
    scripted.scripts.append(sends({"type": "session.ended", "reason": "token revoked"}, close=4403))
    with pytest.raises(CliError, match="ended the live session: token revoked"):
        watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), Printed().printer())


def test_watching_something_not_visible_is_an_error(scripted):
    scripted.scripts.append(sends({"type": "error", "deployment": 42, "error": "not found"}))
    with pytest.raises(CliError, match="deployment 42: not found"):
        watch(Client(scripted.url, "t"), detail(5, "active", (1, "running")), Printed().printer())


class Quiet:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def progress() -> ProgressLine:
    return ProgressLine(Quiet())  # type: ignore[arg-type]


def test_wait_follows_events_to_the_goal_then_reads_the_result(scripted):
    scripted.scripts.append(sends(
        {"type": "watching", "deployment": 42, "sequence": 4, "state": "provisioning"},
        event(5, "provisioning", 1, "running", "building"),
        event(6, "active", 2, "running", "building"),
    ))
    final = detail(6, "active", (1, "running"), (2, "running"))
    final["instances"][0]["public_ips"] = ["198.18.0.7"]
    scripted.details.append(final)
    result = wait_until(Client(scripted.url, "t"), detail(4, "provisioning", (1, "building"), (2, "building")),
                        GOALS["launch"], timeout=60, progress=progress())
    assert result == final
    assert scripted.rest_calls == 1  # the final read only: the events carried the states


def test_wait_reports_a_failure_with_the_servers_errors(scripted):
    scripted.scripts.append(sends(
        {"type": "watching", "deployment": 42, "sequence": 4, "state": "provisioning"},
        event(5, "partially_failed", 1, "error", "building"),
    ))
    scripted.details.append(detail(5, "partially_failed", (1, "error"), error="quota exceeded at the provider"))
    with pytest.raises(CliError) as caught:
        wait_until(Client(scripted.url, "t"), detail(4, "provisioning", (1, "building")), GOALS["launch"],
                   timeout=60, progress=progress())
    # the event names a state but not the error: the failure is reported after reading the deployment again
    assert caught.value.lines() == ["shop (deployment 42) is partially_failed",
                                    "  shop-1: quota exceeded at the provider"]


def test_wait_gives_up_at_the_timeout(scripted):
    scripted.scripts.append(sends({"type": "watching", "deployment": 42, "sequence": 4, "state": "provisioning"}))
    with pytest.raises(CliError, match=r"timed out after 0.5 s waiting for shop \(deployment 42\): it is "
                                       r"provisioning"):
        wait_until(Client(scripted.url, "t"), detail(4, "provisioning", (1, "building")), GOALS["launch"],
                   timeout=0.5, progress=progress())


def test_wait_falls_back_to_polling_when_the_socket_is_refused(scripted):
    scripted.scripts.append(sends(close=1011))
    scripted.details.extend([detail(5, "provisioning", (1, "building")), detail(6, "active", (1, "running")),
                             detail(6, "active", (1, "running"))])
    result = wait_until(Client(scripted.url, "t"), detail(4, "provisioning", (1, "building")), GOALS["launch"],
                        timeout=60, progress=progress())
    assert result["state"] == "active"
    assert scripted.rest_calls == 3  # two polls, then the final read
