"""Liveness and readiness for load balancers and orchestrators.

- `GET /healthz`: the process answers (no database or network call), 200 `{"status": "ok"}`.
- `GET /readyz`: it can serve: the database answers a query, Redis answers (when `REDIS_URL` is set: cache,
  channel layer), and the Celery broker accepts a connection (unless tasks run inline). 200 with every check, or
  503 naming what failed. Messages say which component and why, never an address or a credential.

Both answer without a session or token and are exempt from the HTTPS redirect (probes often speak plain HTTP to
the backend), and neither is cached.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

PROBE_TIMEOUT = 2.0


def _database() -> str:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _redis() -> str:
    if not settings.REDIS_URL:
        return "not used (embedded default)"
    from django.core.cache import cache

    key = "readyz-probe"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("the cache did not return what was written")
    return "ok"


def _broker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "not used (tasks run inline)"
    from portal.celery import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)
    return "ok"


CHECKS = {"database": _database, "redis": _redis, "broker": _broker}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, Any] = {}
    ready = True
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            checks[name] = {"status": check()}
        except Exception as exc:  # a failing component is the answer, not an error page
            ready = False
            checks[name] = {"status": "failing", "error": type(exc).__name__}
        checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return JsonResponse({"status": "ok" if ready else "failing", "checks": checks}, status=200 if ready else 503)
