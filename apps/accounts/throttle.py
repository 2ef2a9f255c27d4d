"""Sign-in throttling, counted in the shared cache (Redis in production) so every process sees every attempt."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _key(login: str, ip: str | None) -> str:
    digest = hashlib.sha256(f"{(login or '').strip().lower()}|{ip or '-'}".encode()).hexdigest()[:32]
    return f"signin-fail:{digest}"


def is_blocked(login: str, ip: str | None) -> bool:
    return int(cache.get(_key(login, ip), 0)) >= settings.SKYPORT_LOGIN_MAX_FAILURES


def count_attempt(login: str, ip: str | None) -> int:
    """Count an attempt *before* the password is checked, so parallel guesses cannot slip past the limit."""
    key = _key(login, ip)
    cache.add(key, 0, timeout=settings.SKYPORT_LOGIN_WINDOW_SECONDS)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=settings.SKYPORT_LOGIN_WINDOW_SECONDS)
        return 1


def forgive(login: str, ip: str | None) -> None:
    cache.delete(_key(login, ip))


def message() -> str:
    minutes = settings.SKYPORT_LOGIN_WINDOW_SECONDS // 60
    return (
        f"Too many failed sign-ins for this account from your address. Wait {minutes} minutes and try again, "
        "or ask an administrator to reset your password."
    )
