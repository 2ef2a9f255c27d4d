"""Quota reservations, exact under concurrency.

A launch reserves its demand (instances, vCPU, RAM, disk) against every quota that applies to it: the
organisation's, the project's and the user's. The applicable quota rows are locked (in primary-key order, so two
reservations never deadlock) before the held reservations are summed, so on PostgreSQL N simultaneous requests
against a quota of K succeed exactly K times. Where no quota applies there is no limit and nothing to lock.
A reservation is released when its deployment fails before launching or is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from apps.accounts.models import Project, User
from apps.core.permissions import ServiceError
from apps.deployments.models import Deployment, Quota, QuotaReservation

RESOURCES = (("instances", "max_instances", "instances", ""), ("vcpus", "max_vcpus", "vCPU", ""),
             ("ram_mb", "max_ram_mb", "RAM", " MiB"), ("disk_gb", "max_disk_gb", "disk", " GB"))


@dataclass(frozen=True)
class Demand:
    instances: int = 0
    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: int = 0


class QuotaExceeded(ServiceError):
    """The launch would go over a quota; the message says which, how much is used and what was asked."""


def _applicable(project: Project, user: User) -> Q:
    return Q(organization_id=project.organization_id) & (
        Q(project__isnull=True, user__isnull=True) | Q(project_id=project.pk) | Q(user_id=user.pk)
    )


def _held(quota: Quota) -> dict[str, int]:
    held = QuotaReservation.objects.all_tenants().filter(organization_id=quota.organization_id,
                                                         released_at__isnull=True)
    if quota.project_id:
        held = held.filter(project_id=quota.project_id)
    elif quota.user_id:
        held = held.filter(user_id=quota.user_id)
    sums = held.aggregate(**{field: Sum(field) for field, *_ in RESOURCES})
    return {field: int(sums[field] or 0) for field, *_ in RESOURCES}


def quota_usage(*, project: Project, user: User) -> list[tuple[Quota, dict[str, int]]]:
    """Each applicable quota with what is held against it (for "8 of 10 vCPU used" before a launch)."""
    quotas = Quota.objects.all_tenants().filter(_applicable(project, user)).select_related("project", "user")
    return [(quota, _held(quota)) for quota in quotas]


@transaction.atomic
def quota_reserve(*, project: Project, user: User, demand: Demand,
                  deployment: Deployment | None = None) -> QuotaReservation:
    """Hold `demand` against every applicable quota, or raise QuotaExceeded and hold nothing."""
    quotas = list(
        Quota.objects.all_tenants().filter(_applicable(project, user)).select_for_update(of=("self",))
        .select_related("project", "user").order_by("pk")
    )
    for quota in quotas:
        held = _held(quota)
        for field, limit_field, label, unit in RESOURCES:
            limit = getattr(quota, limit_field)
            asked = getattr(demand, field)
            if limit is not None and asked and held[field] + asked > limit:
                raise QuotaExceeded(
                    f"The {label} quota {quota.scope_label} would be exceeded: {held[field]}{unit} of "
                    f"{limit}{unit} used, {asked}{unit} more asked."
                )
    return QuotaReservation.objects.create(
        organization_id=project.organization_id, project=project, user=user, deployment=deployment,
        instances=demand.instances, vcpus=demand.vcpus, ram_mb=demand.ram_mb, disk_gb=demand.disk_gb,
    )


def quota_release(reservation: QuotaReservation) -> bool:
    """Give the reservation back (once: a second release changes nothing). True when this call released it."""
    released = QuotaReservation.objects.all_tenants().filter(pk=reservation.pk, released_at__isnull=True).update(
        released_at=timezone.now()
    )
    return released == 1
