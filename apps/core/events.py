"""Live events: thin messages to Channels groups, sent only once the transaction that caused them commits."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def session_group(session_key: str) -> str:
    """The sockets of one signed-in browser session (ended at sign-out, leaving the user's other sessions open)."""
    import hashlib

    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def org_group(org_id: int) -> str:
    return f"org.{org_id}"


def project_group(project_id: int) -> str:
    return f"project.{project_id}"


SEND_TIMEOUT_SECONDS = 10
_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _sender_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for sends from plain threads (Celery workers, commands), started on first use.
    async_to_sync would start a new loop in a new thread for every message, and the Redis layer keeps its
    connections per loop: each event paid a thread, a loop and a Redis connection. Re-made after a fork."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="skyport-events", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def _in_async_server() -> bool:
    """True in a thread that daphne's loop runs sync code in: async_to_sync hands the send back to that loop."""
    return getattr(SyncToAsync.threadlocal, "main_event_loop", None) is not None


def send_now(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if _in_async_server() or isinstance(layer, InMemoryChannelLayer):
            # the in-memory layer lives in one process; its queues belong to the loops that wait on them
            async_to_sync(layer.group_send)(group, message)
        else:
            future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _sender_loop())
            future.result(timeout=SEND_TIMEOUT_SECONDS)
    except Exception:  # a live update that cannot be delivered must not fail the write that caused it
        log.warning("could not deliver live event to %s", group, exc_info=True)


def send_on_commit(group: str, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send_now(group, message))
