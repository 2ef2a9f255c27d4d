"""Who is looking at a deployment right now, as far as the reconciler cares.

The deployment socket calls `watch_touch` while a page (or CLI) watches a deployment; the reconciler asks `watched`
to sync those account-regions every few seconds instead of every few minutes. Presence lives in the shared Django
cache (Redis in production, so every web process and worker sees the same marks; local memory in tests and the
embedded default) and simply expires: a closed tab needs no clean-up.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.cache import cache

DEFAULT_TTL = 60  # seconds; the socket touches again on every watch and ping, well within this
KEY = "deployments:watched:{}"


def watch_touch(deployment_id: int, ttl: int = DEFAULT_TTL) -> None:
    """Mark the deployment as watched for the next `ttl` seconds."""
    cache.set(KEY.format(int(deployment_id)), 1, timeout=max(int(ttl), 1))


def watched(deployment_ids: Iterable[int]) -> set[int]:
    """The ids among `deployment_ids` that someone is watching. One cache round trip whatever the number of ids."""
    keys = {KEY.format(int(pk)): int(pk) for pk in deployment_ids}
    if not keys:
        return set()
    return {keys[key] for key in cache.get_many(list(keys))}
