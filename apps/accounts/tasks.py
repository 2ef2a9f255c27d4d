"""Periodic housekeeping. Thin and idempotent: safe to run twice."""

from __future__ import annotations

import datetime

from celery import shared_task
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Notification


@shared_task
def expire_memberships() -> int:
    return services.membership_expire_due()


@shared_task
def prune_notifications(days: int = 90) -> int:
    cutoff = timezone.now() - datetime.timedelta(days=days)
    deleted, _ = Notification.objects.all_tenants().filter(read_at__lt=cutoff).delete()
    return deleted
