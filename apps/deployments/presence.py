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
    """Mark the deployment as watched for the next `ttl` seconds. A watch that starts (rather than one renewed by a
    ping) also brings forward the next sweep of the deployment's account-regions: the reconciler only reads presence
    when a sweep ends, so a region on the slow interval would otherwise stay slow for minutes after a page opens."""
    key, timeout = KEY.format(int(deployment_id)), max(int(ttl), 1)
    if cache.touch(key, timeout):
        return
    cache.set(key, 1, timeout=timeout)
    sweep_soon(int(deployment_id))


def sweep_soon(deployment_id: int) -> int:
    """Make the account-regions of the deployment's servers due now (unless already due). Returns how many."""
    from django.utils import timezone

    from apps.deployments.models import Instance, SweepState
    from apps.deployments.states import InstanceState

    now = timezone.now()
    places = set(Instance.objects.all_tenants().filter(deployment_id=deployment_id)
                 .exclude(state=InstanceState.DELETED).values_list("account_id", "region").distinct())
    moved = 0
    for account_id, region in places:
        moved += SweepState.objects.filter(account_id=account_id, region=region, next_sweep_at__gt=now).update(
            next_sweep_at=now)
    return moved


def watched(deployment_ids: Iterable[int]) -> set[int]:
    """The ids among `deployment_ids` that someone is watching. One cache round trip whatever the number of ids."""
    keys = {KEY.format(int(pk)): int(pk) for pk in deployment_ids}
    if not keys:
        return set()
    return {keys[key] for key in cache.get_many(list(keys))}
