"""Catalogue sync. Thin and idempotent: take ids, load fresh rows, call the service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from apps.clouds import services
from apps.clouds.models import CloudAccount


@shared_task
def sync_account_task(account_id: int) -> dict[str, Any]:
    account = CloudAccount.objects.all_tenants().filter(pk=account_id, is_active=True).first()
    if account is None:
        return {"ok": False, "message": "no such active account"}
    result = services.sync_account(account=account)
    return {"ok": result.ok, "message": result.message, "counts": result.counts}


@shared_task
def sync_all_accounts() -> int:
    """Enqueue one sync per active account (each runs, fails and retries on its own)."""
    ids = list(CloudAccount.objects.all_tenants().filter(is_active=True).values_list("pk", flat=True))
    for account_id in ids:
        sync_account_task.delay(account_id)
    return len(ids)


# the Operation protocol's tasks live in their own module: importing them here registers them with autodiscovery
from apps.clouds.operations_tasks import operation_run_task, operations_resume  # noqa: E402, F401
