"""Setting and removing quotas (organisation, project, or one user in an organisation), and what is used of them.

A quota is set for one scope: the whole organisation (no project, no user), one project of it, or one member of
it. Setting a quota that exists changes it; a limit left out keeps its value (a new quota starts without it), and
`None` removes that limit. Lowering a limit below what is in use is allowed: running deployments keep running,
new launches are refused until enough is given back.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum

from apps.accounts.models import Membership, Organization, Project, User
from apps.core import audit
from apps.core.permissions import ServiceError, require
from apps.deployments.models import Quota, QuotaReservation
from apps.deployments.quotas import RESOURCES

LIMITS = tuple(limit for _, limit, _, _ in RESOURCES)  # max_instances, max_vcpus, max_ram_mb, max_disk_gb
LIMIT_MAX = 2**31 - 1  # a PositiveIntegerField on every database
AUDITED = ("project", "user", *LIMITS)
_KEEP = object()  # a limit that was not given


def _clean_limit(name: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ServiceError({name: "A limit is a whole number (or empty for no limit)."})
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ServiceError({name: "A limit is a whole number (or empty for no limit)."})
    if value < 0:
        raise ServiceError({name: "A limit cannot be negative."})
    if value > LIMIT_MAX:
        raise ServiceError({name: f"A limit is at most {LIMIT_MAX}."})
    return value


def _clean_limits(limits: dict[str, Any]) -> dict[str, int | None]:
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"quota_set() got unexpected limits: {', '.join(sorted(unknown))}")
    errors: dict[str, list[str]] = {}
    clean: dict[str, int | None] = {}
    for name, value in limits.items():
        try:
            clean[name] = _clean_limit(name, value)
        except ServiceError as exc:
            errors.setdefault(name, []).extend(exc.message_dict[name])
    if errors:
        raise ServiceError(errors)
    return clean


def _check_scope(organization: Organization, project: Project | None, user: User | None) -> None:
    if project is not None and user is not None:
        raise ServiceError("A quota is for the organisation, one project or one user: not a project and a user.")
    if project is not None and project.organization_id != organization.pk:
        raise ServiceError({"project": "This project belongs to another organisation."})
    if user is not None:
        member = Membership.objects.all_tenants().filter(organization_id=organization.pk, user_id=user.pk).exists()
        if not member or not user.is_active:
            raise ServiceError({"user": f"{user.username} is not a member of {organization.name}."})


def _state(quota: Quota) -> dict[str, Any]:
    return audit.snapshot(quota, AUDITED)


def quota_of(
    *, organization: Organization, project: Project | None = None, user: User | None = None
) -> Quota | None:
    """The quota of one scope, if it is set."""
    return _scope(organization, project, user).first()


def _scope(organization: Organization, project: Project | None, user: User | None) -> Any:
    rows = Quota.objects.all_tenants().filter(organization_id=organization.pk)
    if project is not None:
        return rows.filter(project_id=project.pk)
    if user is not None:
        return rows.filter(user_id=user.pk, project__isnull=True)
    return rows.filter(project__isnull=True, user__isnull=True)


def quota_set(
    *,
    actor: User,
    organization: Organization,
    project: Project | None = None,
    user: User | None = None,
    **limits: Any,
) -> Quota:
    """Create or change the quota of one scope (needs `quotas.manage` in the organisation). Limits:
    max_instances, max_vcpus, max_ram_mb, max_disk_gb; a limit not given keeps its value, None means no limit.
    Raises ServiceError (nothing written) on a bad value or a project/user of another organisation."""
    require(actor, "quotas.manage", organization)
    clean = _clean_limits(limits)
    _check_scope(organization, project, user)
    with transaction.atomic():
        quota = _scope(organization, project, user).select_for_update(of=("self",)).first()
        created = quota is None
        if quota is None:
            quota = Quota(organization=organization, project=project, user=user)
        before = None if created else _state(quota)
        for name in LIMITS:
            value = clean.get(name, _KEEP)
            if value is not _KEEP:
                setattr(quota, name, value)
        after = _state(quota)
        if not created and after == before:
            return quota
        quota.updated_by = actor
        try:
            with transaction.atomic():  # a savepoint: a concurrent first set of the same scope loses cleanly
                quota.save()
        except IntegrityError:
            raise ServiceError("This quota was just set by somebody else: look at it again and retry.") from None
        audit.record(actor=actor, verb="quota.create" if created else "quota.update", obj=quota,
                     object_label=str(quota), before=before, after=after)
    return quota


def quota_delete(*, actor: User, quota: Quota) -> None:
    """Remove a quota (needs `quotas.manage`): its scope has no limit from now on. Reservations are kept (they are
    the deployments' own record of what they hold)."""
    require(actor, "quotas.manage", quota)
    with transaction.atomic():
        locked = Quota.objects.all_tenants().select_for_update(of=("self",)).filter(pk=quota.pk).select_related(
            "project", "user").first()
        if locked is None:
            return
        audit.record(actor=actor, verb="quota.delete", obj=locked, object_label=str(locked), before=_state(locked))
        locked.delete()


def quotas_used(quotas: list[Quota]) -> dict[int, dict[str, int]]:
    """What is held against each quota (the sums apps.deployments.quotas uses to decide a launch), for many quotas in
    three queries whatever their number: {quota id: {"instances", "vcpus", "ram_mb", "disk_gb"}}."""
    fields = [field for field, *_ in RESOURCES]
    sums = {field: Sum(field) for field in fields}
    zero = dict.fromkeys(fields, 0)
    held = QuotaReservation.objects.all_tenants().filter(released_at__isnull=True).order_by()
    orgs = {q.organization_id for q in quotas}
    by_org: dict[Any, dict[str, int]] = {}
    by_project: dict[Any, dict[str, int]] = {}
    by_user: dict[Any, dict[str, int]] = {}
    if any(q.project_id is None and q.user_id is None for q in quotas):
        for row in held.filter(organization_id__in=orgs).values("organization_id").annotate(**sums):
            by_org[row["organization_id"]] = {f: int(row[f] or 0) for f in fields}
    projects = {q.project_id for q in quotas if q.project_id}
    if projects:
        for row in held.filter(project_id__in=projects).values("project_id").annotate(**sums):
            by_project[row["project_id"]] = {f: int(row[f] or 0) for f in fields}
    users = {q.user_id for q in quotas if q.user_id}
    if users:
        for row in held.filter(organization_id__in=orgs, user_id__in=users).values(
                "organization_id", "user_id").annotate(**sums):
            by_user[(row["organization_id"], row["user_id"])] = {f: int(row[f] or 0) for f in fields}
    used: dict[int, dict[str, int]] = {}
    for q in quotas:
        if q.project_id:
            used[q.pk] = by_project.get(q.project_id, zero)
        elif q.user_id:
            used[q.pk] = by_user.get((q.organization_id, q.user_id), zero)
        else:
            used[q.pk] = by_org.get(q.organization_id, zero)
    return used
