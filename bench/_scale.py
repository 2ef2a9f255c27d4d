"""What the scale benchmarks (list_scale, live_latency, freshness) share: Django set up in the benchmark's own process
against the stack's database, API tokens for the demo personas, and a load figure for the set-up line.

The benchmark process talks to the same PostgreSQL database and Redis db as the stack it started (bench.stack), so
it can seed rows in bulk and call services directly; everything it measures still goes through daphne, the Celery
worker and beat in their own processes.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Any

from bench.stack import Stack

# the environment the in-process Django needs to see what the stack sees (same database, Redis db, prefix, keys)
SHARED_ENV = ("DATABASE_URL", "REDIS_URL", "SKYPORT_REDIS_PREFIX", "SKYPORT_FERNET_KEYS", "SECRET_KEY",
              "SKYPORT_ENABLE_SIM", "SKYPORT_INPROCESS_SCHEDULER", "SKYPORT_VAR_DIR", "SKYPORT_IMAGE_DIR",
              "SKYPORT_TESTING", "ALLOWED_HOSTS", "CELERY_TASK_ALWAYS_EAGER")


def django_for(stack: Stack, **overrides: str) -> None:
    """Set Django up in this process on the stack's stores (call once, before importing any model)."""
    for name in SHARED_ENV:
        if name in stack.env:
            os.environ[name] = stack.env[name]
    os.environ.update(overrides)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    # the in-process test Client would print an access line per request between the figures
    logging.getLogger("skyport.access").setLevel(logging.WARNING)


def token_for(username: str, org_slug: str = "acme", scope: str = "read") -> str:
    """A fresh API token secret for a demo persona in one organisation (never printed)."""
    from apps.accounts import services
    from apps.accounts.models import Organization, User

    user = User.objects.get(username=username)
    organization = Organization.objects.all_tenants().get(slug=org_slug)
    return str(services.token_create(actor=user, organization=organization, name=f"bench-{username}",
                                     scope=scope)[1])


def raise_open_files(wanted: int) -> int:
    """Lift this process's open-file limit towards `wanted` (one socket per websocket client); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def load_average() -> str:
    """The machine's load when the figures were taken (other work shares the 2 cores)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summary_ms(values: list[float]) -> dict[str, Any]:
    """Percentiles of durations in seconds, as milliseconds."""
    from bench.common import summary

    return {k: (v if k == "n" else ms(v)) for k, v in summary(values).items()}
