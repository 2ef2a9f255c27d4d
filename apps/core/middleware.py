from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.core.access import NO_ACCESS, get_access
from apps.core.context import client_ip_var, new_request_id, request_id_var


def client_ip(request: HttpRequest) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites REMOTE_ADDR
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Request id (taken from X-Request-ID when sane) and client IP for logs and audit events."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if incoming.isalnum() and 8 <= len(incoming) <= 64 else new_request_id()
        request.request_id = rid  # type: ignore[attr-defined]
        t1 = request_id_var.set(rid)
        t2 = client_ip_var.set(client_ip(request))
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(t1)
            client_ip_var.reset(t2)
        response["X-Request-ID"] = rid
        return response


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
