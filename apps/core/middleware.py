from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.core.access import NO_ACCESS, get_access
from apps.core.context import client_ip_var, new_request_id, request_id_var

access_log = logging.getLogger("skyport.access")
# probes answer every few seconds: their lines go to DEBUG
QUIET_PATHS = frozenset({"/healthz", "/readyz"})


def client_ip(request: HttpRequest) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites REMOTE_ADDR
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Request id (taken from X-Request-ID when sane) and client IP for logs and audit events; one access line per
    request (method, path without its query string, status, duration, user id)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if incoming.isalnum() and 8 <= len(incoming) <= 64 else new_request_id()
        request.request_id = rid  # type: ignore[attr-defined]
        t1 = request_id_var.set(rid)
        t2 = client_ip_var.set(client_ip(request))
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            self._log(request, response.status_code, started)
        finally:
            request_id_var.reset(t1)
            client_ip_var.reset(t2)
        response["X-Request-ID"] = rid
        return response

    @staticmethod
    def _log(request: HttpRequest, status: int, started: float) -> None:
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        user = getattr(request, "user", None)
        user_id = user.pk if user is not None and user.is_authenticated else None
        # the path only: a query string may carry values nobody should find in a log
        access_log.log(level, "%s %s %s %.1fms", request.method, request.path, status, duration_ms,
                       extra={"method": request.method, "path": request.path, "status": status,
                              "duration_ms": duration_ms, "user_id": user_id})


class CurrentTenantMiddleware:
    """Puts the user's access and the current organisation (chosen in the switcher, kept in the session) on the
    request. Pages scope by it; the API scopes by memberships and explicit filters instead."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        access = get_access(user) if user is not None else NO_ACCESS
        request.access = access  # type: ignore[attr-defined]
        org_ids = access.organization_ids
        current = request.session.get("org_id") if hasattr(request, "session") else None
        if current not in org_ids:
            current = min(org_ids) if org_ids else None
        request.organization_id = current  # type: ignore[attr-defined]
        return self.get_response(request)
