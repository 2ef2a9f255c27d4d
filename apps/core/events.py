"""Live events: thin messages to Channels groups, sent only once the transaction that caused them commits."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
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


def send_now(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a live update that cannot be delivered must not fail the write that caused it
        log.warning("could not deliver live event to %s", group, exc_info=True)


def send_on_commit(group: str, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: send_now(group, message))
