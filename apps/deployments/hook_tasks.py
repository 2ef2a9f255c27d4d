"""Thin Celery tasks for after-launch hook deliveries: send one (queued on commit by `hooks_after_launch`), and
periodically send those that are due (a retry whose time has come, one whose task was lost, one left by a worker
that died). Both are safe to run twice: a delivery is claimed by a conditional UPDATE before it is sent."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from apps.deployments.hooks import hook_deliveries_due, hook_delivery_attempt
from apps.deployments.models import HookDelivery


@shared_task(name="apps.deployments.hook_tasks.hook_delivery_send", ignore_result=True)
def hook_delivery_send(delivery_id: int) -> None:
    delivery = hook_delivery_attempt(delivery_id)
    if delivery is None or delivery.state != HookDelivery.State.PENDING or delivery.next_attempt_at is None:
        return
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        # come back when the retry is due (the periodic resume would too, later; the claim makes a double send
        # impossible). Eager mode runs inline, where an eta would be ignored: there the periodic resume sends it.
        hook_delivery_send.apply_async((delivery_id,), eta=delivery.next_attempt_at)


@shared_task(name="apps.deployments.hook_tasks.hook_deliveries_resume", ignore_result=True)
def hook_deliveries_resume() -> int:
    """Send every due delivery here. Returns how many were sent (delivered or not)."""
    sent = 0
    for delivery_id in hook_deliveries_due():
        if hook_delivery_attempt(delivery_id) is not None:
            sent += 1
    return sent
