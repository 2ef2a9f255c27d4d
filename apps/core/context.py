"""Request context (request id, client IP) carried to audit events and log lines."""

from __future__ import annotations

import contextvars
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("skyport_request_id", default="")
client_ip_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("skyport_client_ip", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]
