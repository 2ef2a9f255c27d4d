"""Thin Celery tasks for the reconciler. Safe to run twice: each account-region is swept under its own lease, and a
resync applies what the provider says now.

Beat entry (settings.CELERY_BEAT_SCHEDULE): "reconcile": {"task": "apps.deployments.reconciler_tasks.reconcile_tick",
"schedule": 1.0}. The tick is cheap when nothing is due (a few small queries): how often each account-region is really
swept is decided by its SweepState.next_sweep_at.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.http import Http404

from apps.accounts.models import User
from apps.clouds.operations_tasks import worker_id
from apps.core.permissions import ServiceError
from apps.deployments.models import Instance
from apps.deployments.reconciler import LOOK_UP_SECONDS, instance_resync, look_up_watched, reconcile_due


@shared_task(name="apps.deployments.reconciler_tasks.reconcile_tick", ignore_result=True)
def reconcile_tick() -> int:
    """Sweep the account-regions that are due, and hand the look-ups of watched servers to tasks of their own (one
    per account-region, run by whichever worker is free; inline with eager Celery). Returns how many were swept by
    this worker."""
    eager = bool(settings.CELERY_TASK_ALWAYS_EAGER)
    return reconcile_due(worker_id=worker_id(), look_up_elsewhere=None if eager else _enqueue_look_up)


@shared_task(name="apps.deployments.reconciler_tasks.look_up_watched_task", ignore_result=True)
def look_up_watched_task(account_id: int, region: str) -> int:
    return look_up_watched(account_id, region)


def _enqueue_look_up(account_id: int, region: str) -> None:
    # a pass that no worker could start before the next one is due is dropped: the next one does the same work
    look_up_watched_task.apply_async((account_id, region), expires=LOOK_UP_SECONDS * 2)


@shared_task(name="apps.deployments.reconciler_tasks.instance_resync_task", ignore_result=True)
def instance_resync_task(instance_id: int, actor_id: int) -> str:
    """Resync one instance for a person who asked for it (the visibility check runs again with fresh rows)."""
    actor = User._base_manager.filter(pk=actor_id, is_active=True).first()
    instance = Instance.objects.all_tenants().filter(pk=instance_id).first()
    if actor is None or instance is None:
        return "gone"
    try:
        return instance_resync(actor=actor, instance=instance).state
    except Http404:
        return "gone"
    except ServiceError as exc:  # the provider could not be asked: the next sweep tries again
        return "; ".join(exc.messages)


def instance_resync_enqueue(instance: Instance, actor: User) -> None:
    """Resync once the caller's transaction has committed (never inside it)."""
    instance_id, actor_id = instance.pk, actor.pk
    transaction.on_commit(lambda: instance_resync_task.delay(instance_id, actor_id))
