"""Launching deployments and operating them.

The launch pipeline (docs/deployments.md, docs/operations.md):

1. `deployment_request` checks everything before anything is written — the catalog item is launchable in the
   project, the parameters fit the blueprint, the name, the SSH key, the lease — places every server
   (apps.deployments.placement: the chosen cloud or a policy, with the reason for each cloud), reserves the quota
   (exact under concurrency) and records the deployment with its instances `pending`. A retried request with the same
   Idempotency-Key answers with the first deployment. Over the catalog item's threshold it waits for an approval.
2. `deployment_launch` (a Celery task, no transaction open) asks the before-launch hooks, which may veto, then
   `deployment_advance` starts a create Operation for every server whose dependencies are running, with the
   outputs of those dependencies (their addresses) filled into its user data.
3. `instance_operation_follow` is called after every run of an instance's Operation: it records the provider's
   server id as soon as it is known, moves the instance through the state machine, advances the deployment, falls
   back to the next cloud under the `ordered` policy, and tells the after-launch hooks.

Lifecycle (start, stop, reboot, resize, delete; retry failed servers; cancel; extend a lease; transfer) goes through
the same Operations. Nothing here calls a provider inside a transaction: operations are enqueued on commit.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Membership, Project, SshKey, User
from apps.catalog.blueprints import (
    HOURS_PER_MONTH,
    MAX_INSTANCES,
    parameter_values,
    render_outputs,
    render_user_data,
    server_count,
    server_order,
)
from apps.catalog.catalog import catalog_item_launch_check
from apps.catalog.models import BlueprintVersion, CatalogItem, HardwareProfile, Image
from apps.catalog.profiles import LaunchWorld, launch_world, profile_mapping
from apps.clouds.models import CloudAccount, Flavor, Operation
from apps.clouds.operations import operation_cancel, operation_start
from apps.clouds.operations_tasks import operation_enqueue, operation_run_here
from apps.core import audit
from apps.core.access import get_access
from apps.core.permissions import ServiceError, require
from apps.deployments.events import deployment_event, deployment_event_locked, deployment_first_event
from apps.deployments.models import Approval, Deployment, Instance, InstanceTransition, QuotaReservation
from apps.deployments.placement import Candidate, Rejection, fallbacks, place, placement_candidates
from apps.deployments.quotas import Demand, QuotaExceeded, quota_release, quota_reserve
from apps.deployments.states import DeploymentState as D
from apps.deployments.states import InstanceState as S
from apps.deployments.transitions import IllegalTransition, deployment_refresh_state, transition

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")
NAME_HELP = "lowercase letters, digits and '-', starting with a letter, at most 30 characters"
IMAGE_ITEM_ROLE = "server"
APPROVAL_HOURS = 48
Cause = InstanceTransition.Cause
# deployments that are over: their instances hold nothing and their quota is given back
ENDED = frozenset({D.DELETED, D.VETOED, D.REJECTED, D.CANCELLED})
# operations that move an instance, with the state it passes through and the state it ends in
ACTIONS: dict[str, tuple[str, str, frozenset[str]]] = {
    # action: (operation kind, transitional state, states it may start from)
    "start": ("start_server", S.STARTING, frozenset({S.STOPPED})),
    "stop": ("stop_server", S.STOPPING, frozenset({S.RUNNING})),
    "reboot": ("reboot_server", S.REBOOTING, frozenset({S.RUNNING})),
    "resize": ("resize_server", S.RESIZING, frozenset({S.RUNNING, S.STOPPED})),
}
DONE_STATE = {"start_server": S.RUNNING, "stop_server": S.STOPPED, "reboot_server": S.RUNNING,
              "create_server": S.RUNNING, "delete_server": S.DELETED}
# create failures where another cloud may do better (the `ordered` policy tries the next one)
FALLBACK_ERRORS = frozenset({"capacity", "quota", "transient", "timeout", "failed", "invalid_request", "not_found"})


# --- the launch request ----------------------------------------------------------------------------------------------
@dataclass
class ServerPlan:
    role: str
    count: int
    image: Image
    profile: HardwareProfile
    spread: str = "none"
    user_data: str = ""
    ports: list[dict[str, Any]] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    chosen: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


def _invalid(field_name: str, message: str | list[str]) -> ServiceError:
    return ServiceError({field_name: message if isinstance(message, list) else [message]})


def _source(item: CatalogItem | None, version: BlueprintVersion | None, project: Project,
            worlds: dict[int, LaunchWorld]) -> None:
    if item is None and version is None:
        raise _invalid("catalog_item", "Choose what to launch: a catalog item.")
    if item is not None:
        world = None
        if (item.kind == CatalogItem.Kind.IMAGE and item.image is not None
                and item.organization_id == project.organization_id):
            # read once here, used again by placement: the same accounts, grants, flavors and copies
            world = worlds[item.image.pk] = launch_world(project, item.image)
        reasons = catalog_item_launch_check(item, project=project, world=world)
        if reasons:
            raise _invalid("catalog_item", reasons)
    elif version is not None and version.organization_id != project.organization_id:
        raise _invalid("blueprint_version", "This blueprint version is not offered in this project.")


def _profile_by_size(organization_id: int, size: str) -> HardwareProfile:
    profile = HardwareProfile.objects.all_tenants().filter(organization_id=organization_id, slug=size).first()
    if profile is None:
        names = HardwareProfile.objects.all_tenants().filter(organization_id=organization_id).values_list(
            "slug", flat=True)
        raise _invalid("size", f"Unknown size '{size[:60]}'. Sizes: {', '.join(names) or 'none defined'}.")
    return profile


def _server_plans(item: CatalogItem | None, version: BlueprintVersion | None, *, size: str | None,
                  parameters: dict[str, Any], organization_id: int) -> tuple[list[ServerPlan], dict[str, Any]]:
    if item is not None and item.kind == CatalogItem.Kind.IMAGE:
        if parameters:
            raise _invalid("parameters", f"{item.name} takes no parameters.")
        assert item.image is not None and item.profile is not None  # the catalog's check constraint
        profile = _profile_by_size(organization_id, size) if size else item.profile
        plan = ServerPlan(IMAGE_ITEM_ROLE, 1, item.image, profile, ports=[{"port": 22, "cidr": "0.0.0.0/0",
                                                                            "protocol": "tcp"}])
        return [plan], {}
    version = version or (item.blueprint_version if item is not None else None)
    assert version is not None
    if size:
        raise _invalid("size", "A blueprint's servers have their own sizes: size applies to single-server items.")
    spec = version.spec or {}
    values, problems = parameter_values(spec, parameters)
    if problems:
        raise _invalid("parameters", [p[:1].upper() + p[1:] + "." for p in problems])
    servers = spec.get("servers") or {}
    images = {i.pk: i for i in Image.objects.all_tenants().filter(
        organization_id=organization_id, pk__in=[s.get("image_id") for s in servers.values()])}
    profiles = {p.pk: p for p in HardwareProfile.objects.all_tenants().filter(
        organization_id=organization_id, pk__in=[s.get("profile_id") for s in servers.values()])}
    plans: list[ServerPlan] = []
    total = 0
    for role in server_order(spec):
        server = servers[role]
        count = server_count(server, values)
        image, server_profile = images.get(server.get("image_id")), profiles.get(server.get("profile_id"))
        if count is None or count < 1:
            raise _invalid("parameters", f"Server {role}: count has no valid value.")
        if image is None or server_profile is None:
            raise _invalid("catalog_item", f"Server {role}: its image or hardware profile no longer exists.")
        total += count
        if total > MAX_INSTANCES:
            raise _invalid("parameters", f"A launch makes at most {MAX_INSTANCES} servers.")
        plans.append(ServerPlan(
            role, count, image, server_profile, spread=(server.get("placement") or {}).get("spread", "none"),
            user_data=render_user_data(server.get("user_data", ""), values), ports=list(server.get("ports", [])),
            depends_on=list(server.get("depends_on", [])),
        ))
    return plans, values


def _place(plan: ServerPlan, *, actor: User, project: Project, policy: str, account: CloudAccount | None,
           worlds: dict[int, LaunchWorld] | None = None) -> None:
    """Choose where the plan's servers go. `worlds` (image id → `launch_world`) holds what the launch has read
    about the clouds already; what it lacks is read and added, for the next plan of the same image."""
    worlds = {} if worlds is None else worlds
    world = worlds.get(plan.image.pk)
    if world is None:
        world = worlds[plan.image.pk] = launch_world(project, plan.image)
    candidates, rejected = placement_candidates(user=actor, project=project, image=plan.image, profile=plan.profile,
                                                world=world)
    plan.candidates, plan.rejected = candidates, rejected
    if policy == Deployment.Policy.ACCOUNT:
        assert account is not None
        plan.chosen = place(candidates, count=plan.count, policy="account", account_id=account.pk)
    elif policy == Deployment.Policy.SPREAD or plan.spread != "none":
        spread = plan.spread if plan.spread != "none" else "accounts"
        plan.chosen = place(candidates, count=plan.count, policy="spread", spread=spread)
    else:
        plan.chosen = place(candidates, count=plan.count, policy=policy)


def _placement_reason(policy: str, candidate: Candidate, plan: ServerPlan) -> str:
    price = f"${candidate.price_per_hour}/h" if candidate.price_per_hour is not None else "price unknown"
    flavor = f"{candidate.flavor.name} ({price})"
    if policy == Deployment.Policy.ACCOUNT:
        return f"the cloud you chose; {flavor}"
    if policy == Deployment.Policy.SPREAD or plan.spread != "none":
        return f"spread across {plan.spread if plan.spread != 'none' else 'accounts'} for availability; {flavor}"
    if policy == Deployment.Policy.ORDERED:
        return f"first cloud in order that fits; {flavor}"
    return f"cheapest cloud that fits; {flavor}"


def _placement_record(policy: str, plans: list[ServerPlan]) -> dict[str, Any]:
    servers = {}
    for plan in plans:
        servers[plan.role] = {
            "size": plan.profile.slug,
            "image": str(plan.image),
            "count": plan.count,
            "depends_on": plan.depends_on,
            "chosen": [{"where": c.where, "account": c.account.pk, "region": c.region, "flavor": c.flavor.name,
                        "price_per_hour": str(c.price_per_hour) if c.price_per_hour is not None else None,
                        "reason": _placement_reason(policy, c, plan)} for c in dict.fromkeys(plan.chosen)],
            "rejected": [{"where": r.where, "reason": r.reason} for r in plan.rejected],
            "candidates": [c.where for c in plan.candidates],
        }
    return {"policy": policy, "servers": servers}


def _candidate_json(c: Candidate) -> dict[str, Any]:
    return {"account": c.account.pk, "region": c.region, "flavor": c.flavor.pk,
            "provider_image_id": c.provider_image_id}


def _ssh_key(actor: User, ssh_key: SshKey | int | str | None) -> SshKey | None:
    if ssh_key is None or ssh_key == "":
        return None
    if isinstance(ssh_key, SshKey):
        key = ssh_key if ssh_key.user_id == actor.pk else None
    else:
        key = SshKey.objects.filter(user=actor).filter(
            Q(pk=int(ssh_key)) if str(ssh_key).isdigit() else Q(name=str(ssh_key))).first()
    if key is None:
        raise _invalid("ssh_key", "No such SSH key in your profile: add it under Profile → SSH keys.")
    return key


def _lease(item: CatalogItem | None, lease_days: Any) -> tuple[datetime.datetime | None, str]:
    if lease_days in (None, ""):
        days = item.lease_days if item is not None else None
    else:
        try:
            days = int(lease_days)
        except (TypeError, ValueError):
            raise _invalid("lease_days", "The lease is a whole number of days.") from None
        if days < 1:
            raise _invalid("lease_days", "A lease lasts at least 1 day.")
    if days is None:
        return None, ""
    limit = item.lease_max_days if item is not None else None
    if limit is not None and days > limit:
        raise _invalid("lease_days", f"{item.name if item else 'This item'} may be leased for at most {limit} days.")
    if days > 3650:
        raise _invalid("lease_days", "A lease lasts at most 3650 days.")
    return timezone.now() + datetime.timedelta(days=days), (item.lease_action if item is not None else "stop")


def _instance_name(deployment_name: str, role: str, index: int, single: bool) -> str:
    return deployment_name if single else f"{deployment_name}-{role}-{index}"


def deployment_request(
    *,
    actor: User,
    project: Project,
    name: str,
    item: CatalogItem | None = None,
    blueprint_version: BlueprintVersion | None = None,
    size: str | None = None,
    policy: str = Deployment.Policy.CHEAPEST,
    account: CloudAccount | None = None,
    parameters: dict[str, Any] | None = None,
    ssh_key: SshKey | int | str | None = None,
    lease_days: Any = None,
    idempotency_key: str | None = None,
) -> tuple[Deployment, bool]:
    """Record a launch and start it (after the commit), or raise ServiceError/PermissionDenied having written and
    reserved nothing and called no provider. Returns (deployment, created): a request repeated with the same
    idempotency key answers (the first deployment, False)."""
    if idempotency_key:
        if len(idempotency_key) > 100:
            raise _invalid("idempotency_key", "An Idempotency-Key has at most 100 characters.")
        existing = Deployment.objects.all_tenants().filter(
            organization_id=project.organization_id, created_by=actor, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    require(actor, "deployments.launch", project)
    worlds: dict[int, LaunchWorld] = {}  # image id → what the check and placement read about the clouds
    _source(item, blueprint_version, project, worlds)
    name = (name or "").strip() if isinstance(name, str) else ""
    if not NAME_RE.match(name):
        raise _invalid("name", f"Name the deployment with {NAME_HELP}.")
    if policy not in Deployment.Policy.values:
        raise _invalid("policy", f"Unknown placement policy: use one of {', '.join(Deployment.Policy.values)}.")
    if (account is not None) != (policy == Deployment.Policy.ACCOUNT):
        if account is None:
            raise _invalid("cloud", "Choose the cloud account, or a placement policy.")
        policy = Deployment.Policy.ACCOUNT
    if account is not None and account.organization_id != project.organization_id:
        raise _invalid("cloud", "No such cloud account.")
    if parameters is not None and not isinstance(parameters, dict):
        raise _invalid("parameters", "Parameters are a mapping of names to values.")
    key = _ssh_key(actor, ssh_key)
    lease_expires_at, lease_action = _lease(item, lease_days)
    plans, values = _server_plans(item, blueprint_version, size=size, parameters=dict(parameters or {}),
                                  organization_id=project.organization_id)
    single = len(plans) == 1 and plans[0].count == 1 and plans[0].role == IMAGE_ITEM_ROLE
    longest = max(len(_instance_name(name, p.role, p.count, single)) for p in plans)
    if longest > 63:
        raise _invalid("name", f"This name is too long for this blueprint's server names ({longest} characters, "
                               f"at most 63): shorten it by {longest - 63}.")
    live = Deployment.objects.all_tenants().filter(project=project, name=name).exclude(state__in=ENDED)
    if live.exists():
        raise _invalid("name", f"{project.name} already has a deployment named {name}: choose another name.")
    for plan in plans:
        try:
            _place(plan, actor=actor, project=project, policy=policy, account=account, worlds=worlds)
        except ServiceError as exc:
            reasons = [f"{r.where}: {r.reason}" for r in plan.rejected]
            raise _invalid("cloud", [f"Server {plan.role}: {exc.messages[0]}", *reasons]) from None
    demand = Demand(
        instances=sum(p.count for p in plans),
        vcpus=sum(c.flavor.vcpus for p in plans for c in p.chosen),
        ram_mb=sum(c.flavor.ram_mb for p in plans for c in p.chosen),
        disk_gb=sum(max(c.flavor.disk_gb, p.profile.disk_gb) for p in plans for c in p.chosen),
    )
    prices = [c.price_per_hour for p in plans for c in p.chosen]
    hourly = sum((x for x in prices if x is not None), Decimal(0)) if any(x is not None for x in prices) else None
    source_version = blueprint_version or (item.blueprint_version if item is not None else None)
    threshold = item.approval_threshold_monthly if item is not None else None
    monthly = (hourly or Decimal(0)) * HOURS_PER_MONTH
    needs_approval = item is not None and threshold is not None and (threshold == 0 or monthly > threshold)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                organization_id=project.organization_id, project=project, owner=actor, name=name,
                catalog_item=item, blueprint_version=source_version, parameters=values, policy=policy,
                placement=_placement_record(policy, plans), estimated_hourly=hourly,
                lease_expires_at=lease_expires_at, lease_action=lease_action,
                idempotency_key=idempotency_key or None, created_by=actor,
                ssh_key_name=key.name if key else "", ssh_public_key=key.public_key if key else "",
                sequence=0 if needs_approval else 1,  # 1: the launch's "state" event below
            )
            try:
                quota_reserve(project=project, user=actor, demand=demand, deployment=deployment)
            except QuotaExceeded as exc:
                raise _invalid("size", exc.messages[0]) from None
            made: list[Instance] = []
            for plan in plans:
                for index, chosen in enumerate(plan.chosen, start=1):
                    made.append(Instance.objects.create(
                        organization_id=project.organization_id, project=project, deployment=deployment,
                        owner=actor, name=_instance_name(name, plan.role, index, single), role=plan.role,
                        index=index, account=chosen.account, region=chosen.region, image=plan.image,
                        provider_image_id=chosen.provider_image_id, size=plan.profile.slug,
                        flavor_id=chosen.flavor.provider_id, vcpus=chosen.flavor.vcpus,
                        ram_mb=chosen.flavor.ram_mb, disk_gb=max(chosen.flavor.disk_gb, plan.profile.disk_gb),
                        price_per_hour=chosen.price_per_hour, user_data=plan.user_data, ports=plan.ports,
                        fallbacks=[_candidate_json(c) for c in fallbacks(plan.candidates, chosen)]
                        if policy == Deployment.Policy.ORDERED else [],
                    ))
    except IntegrityError:
        if idempotency_key:  # a concurrent request with the same key won
            existing = Deployment.objects.all_tenants().filter(
                organization_id=project.organization_id, created_by=actor, idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing, False
        raise
    audit.record(actor=actor, verb="deployment.request", obj=deployment,
                 extra={"item": item.slug if item else None, "policy": policy, "instances": demand.instances,
                        "hourly": str(hourly) if hourly is not None else None})
    if needs_approval:
        assert item is not None and threshold is not None
        reason = (f"${monthly.quantize(Decimal('0.01'))} a month, over the ${threshold} threshold of {item.name}"
                  if threshold else f"{item.name} always needs an approval")
        _approval_open(deployment, actor, reason)
    else:
        _remember_launch(deployment, made)
        deployment_first_event(deployment, "state")
        _launch_on_commit(deployment.pk)
    return deployment, True


def _remember_launch(deployment: Deployment, instances: list[Instance]) -> None:
    """Keep on the new deployment what a fresh read would find (its servers, no approval, the live count), so
    the launch's answer is serialised from memory instead of read back: the answer is most of a launch request."""
    deployment._prefetched_objects_cache = {  # type: ignore[attr-defined]
        "instances": sorted(instances, key=lambda i: (i.role, i.index))}
    Deployment.approval.related.set_cached_value(deployment, None)  # type: ignore[attr-defined]
    deployment.instance_count = len(instances)  # type: ignore[attr-defined]


def redacted_parameters(parameters: Any) -> Any:
    """Launch parameters as shown to anybody who sees the deployment: a secret-looking one is never shown."""
    if not isinstance(parameters, dict):
        return parameters
    return {k: (audit.REDACTED if audit.is_secret_field(str(k)) else v) for k, v in parameters.items()}


def _launch_on_commit(deployment_id: int) -> None:
    from apps.deployments.tasks import deployment_launch_task

    def send() -> None:
        try:
            deployment_launch_task.delay(deployment_id)
        except Exception:  # the broker is down: the request is recorded, deployments_resume launches it later
            if settings.CELERY_TASK_ALWAYS_EAGER:
                raise
            log.warning("could not enqueue the launch of deployment %s; it will be resumed", deployment_id,
                        exc_info=True)

    transaction.on_commit(send)


RESUME_AFTER = datetime.timedelta(seconds=60)


def deployments_resume(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """Pick up launches whose task was lost (a broker that was down, a worker that died during a hook call, a crash
    between two steps): requested ones older than a minute are launched, provisioning ones advanced. Both are safe
    to run again."""
    now = now or timezone.now()
    counts = {"launched": 0, "advanced": 0}
    requested = Deployment.objects.all_tenants().filter(state=D.REQUESTED, updated_at__lte=now - RESUME_AFTER)
    for deployment_id in requested.values_list("pk", flat=True)[:100]:
        deployment_launch(deployment_id)
        counts["launched"] += 1
    moving = Deployment.objects.all_tenants().filter(
        state__in=[D.PROVISIONING, D.PARTIALLY_FAILED], updated_at__lte=now - RESUME_AFTER,
        instances__state=S.PENDING, instances__operation__isnull=True).distinct()
    for deployment_id in moving.values_list("pk", flat=True)[:100]:
        counts["advanced"] += bool(deployment_advance(deployment_id))
    return counts


# --- approvals ----------------------------------------------------------------------------------------------------
def approvers_of(organization_id: int, *, exclude: Iterable[int] = ()) -> list[User]:
    """Who may decide launch requests in the organisation (the role table's deployments.approve)."""
    users = User.objects.filter(
        is_active=True,
        pk__in=Membership.objects.all_tenants().filter(organization_id=organization_id, project__isnull=True)
        .values("user_id"),
    ).exclude(pk__in=list(exclude))
    return [u for u in users if organization_id in get_access(u).orgs_allowing("deployments.approve")]


def _approval_open(deployment: Deployment, actor: User, reason: str) -> Approval:
    from apps.accounts.services import notification_send

    hours = getattr(settings, "SKYPORT_APPROVAL_HOURS", APPROVAL_HOURS)
    approval = Approval.objects.create(
        organization_id=deployment.organization_id, project_id=deployment.project_id, deployment=deployment,
        requested_by=actor, reason=reason[:300], expires_at=timezone.now() + datetime.timedelta(hours=hours),
    )
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(state=D.PENDING_APPROVAL)
    deployment.state = D.PENDING_APPROVAL
    deployment_event(deployment, "approval")
    for user in approvers_of(deployment.organization_id, exclude=[actor.pk]):
        notification_send(recipient=user, organization_id=deployment.organization_id, level="warning", email=True,
                          text=f"{actor.username} asks to launch {deployment.name} ({reason}).",
                          link=f"/deployments/approvals/{approval.pk}/")
    return approval


@transaction.atomic
def approval_decide(*, actor: User, approval: Approval, approve: bool, comment: str = "") -> Approval:
    from apps.accounts.services import notification_send

    require(actor, "deployments.approve", approval.deployment.project)
    locked = Approval.objects.all_tenants().select_for_update(of=("self",)).get(pk=approval.pk)
    deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=locked.deployment_id)
    if actor.pk in (locked.requested_by_id, deployment.owner_id):
        raise PermissionDenied("Nobody decides their own launch request: another approver must.")
    if locked.state != Approval.State.PENDING:
        raise ServiceError(f"This request was already {locked.get_state_display().lower()}.")
    if locked.expires_at <= timezone.now():
        raise ServiceError("This request expired before it was decided.")
    comment = (comment or "").strip()[:1000]
    if not approve and not comment:
        raise _invalid("comment", "Say why the request is rejected: the requester sees it.")
    if approve:
        # quotas may have changed since the request: take the reservation again under the quota locks
        held = list(QuotaReservation.objects.all_tenants().filter(deployment=deployment, released_at__isnull=True))
        demand = Demand(*(sum(getattr(r, f) for r in held) for f in ("instances", "vcpus", "ram_mb", "disk_gb")))
        for reservation in held:
            quota_release(reservation)
        try:
            with transaction.atomic():
                quota_reserve(project=deployment.project, user=deployment.owner, demand=demand,
                              deployment=deployment)
        except QuotaExceeded as exc:
            transaction.set_rollback(True)
            raise ServiceError(f"Cannot approve now: {exc.messages[0]}") from None
    locked.state = Approval.State.APPROVED if approve else Approval.State.REJECTED
    locked.decided_by, locked.comment, locked.decided_at = actor, comment, timezone.now()
    locked.save(update_fields=["state", "decided_by", "comment", "decided_at"])
    audit.record(actor=actor, verb="deployment.approve" if approve else "deployment.reject", obj=deployment,
                 extra={"comment": comment})
    if approve:
        deployment.state = D.REQUESTED
        deployment.save(update_fields=["state", "updated_at"])
        deployment_event(deployment, "approval")
        _launch_on_commit(deployment.pk)
        text = f"{actor.username} approved {deployment.name}: it is being launched."
    else:
        _end_before_launch(deployment, D.REJECTED, f"Rejected by {actor.username}: {comment}")
        text = f"{actor.username} rejected {deployment.name}: {comment}"
    notification_send(recipient=deployment.owner, organization_id=deployment.organization_id, text=text,
                      level="success" if approve else "danger", link=f"/deployments/{deployment.pk}/", email=True)
    return locked


def approvals_expire(*, now: datetime.datetime | None = None) -> int:
    """Requests nobody decided in time are rejected (their quota given back). Returns how many."""
    now = now or timezone.now()
    expired = 0
    for approval_id in Approval.objects.all_tenants().filter(state=Approval.State.PENDING, expires_at__lte=now) \
            .values_list("pk", flat=True):
        with transaction.atomic():
            approval = Approval.objects.all_tenants().select_for_update(of=("self",)).get(pk=approval_id)
            if approval.state != Approval.State.PENDING:
                continue
            approval.state, approval.decided_at = Approval.State.EXPIRED, now
            approval.save(update_fields=["state", "decided_at"])
            deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=approval.deployment_id)
            _end_before_launch(deployment, D.REJECTED, "Nobody decided the request in time: launch it again.")
            from apps.accounts.services import notification_send

            notification_send(recipient=deployment.owner, organization_id=deployment.organization_id,
                              level="warning", link=f"/deployments/{deployment.pk}/",
                              text=f"The launch request for {deployment.name} expired without a decision.")
            expired += 1
    return expired


def _end_before_launch(deployment: Deployment, state: str, message: str) -> None:
    """Vetoed, rejected or cancelled before any server was asked for: the instances never existed, the quota is
    given back."""
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(state=state, state_message=message[:1000])
    deployment.state, deployment.state_message = state, message[:1000]
    for instance in Instance.objects.all_tenants().filter(deployment=deployment).exclude(state=S.DELETED):
        transition(instance, to=S.DELETED, cause=Cause.CANCEL, message=message)
    deployment_release_quota(deployment.pk)
    deployment_event(deployment, "state")


def deployment_release_quota(deployment_id: int) -> int:
    released = 0
    for reservation in QuotaReservation.objects.all_tenants().filter(deployment_id=deployment_id,
                                                                     released_at__isnull=True):
        released += quota_release(reservation)
    return released


# --- launching --------------------------------------------------------------------------------------------------
def deployment_launch(deployment_id: int, *, run_first_here: bool = False) -> None:
    """Ask the before-launch hooks (no transaction open: they are HTTP calls), then start provisioning. Safe to run
    twice: only the run that moves the deployment out of `requested` continues. `run_first_here` (the launch task)
    runs the first create operation in this process instead of queueing it; the periodic resume, which launches
    many in a row, leaves them to the queue."""
    from apps.deployments.hooks import hooks_before_launch

    deployment = Deployment.objects.all_tenants().get(pk=deployment_id)
    if deployment.state != D.REQUESTED:
        return
    verdict = hooks_before_launch(deployment)
    with transaction.atomic():
        deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment_id)
        if deployment.state != D.REQUESTED:
            return
        if not verdict.allowed:
            _end_before_launch(deployment, D.VETOED, verdict.message or "A launch policy hook refused it.")
            audit.record(actor=None, verb="deployment.veto", obj=deployment, extra={"hook": verdict.hook,
                                                                                   "message": verdict.message})
            return
        deployment.state = D.PROVISIONING
        deployment_event_locked(deployment, "state", save=("state", "updated_at"))
    if run_first_here:
        _advance_and_run_first(deployment_id)
    else:
        deployment_advance(deployment_id)


def _advance_and_run_first(deployment_id: int) -> None:
    """Start the creates and run the first one's first steps here rather than through the queue: a launch then
    waits for no second task to be picked up. The operation is committed before it runs (the launch runs with no
    transaction open, as its hooks require), and the run takes its claim like any worker, so a resumed run of it
    cannot run it twice; if this process dies first, the operation is pending and due for the periodic resume."""
    run_here: list[int] = []
    deployment_advance(deployment_id, run_here=run_here)
    for operation_id in run_here:
        operation_run_here(operation_id)


def _outputs(instances: list[Instance]) -> dict[str, dict[str, str]]:
    outputs: dict[str, dict[str, str]] = {}
    for role in dict.fromkeys(i.role for i in instances):
        group = sorted((i for i in instances if i.role == role), key=lambda i: i.index)
        private = [ip for i in group for ip in i.private_ips[:1]]
        public = [ip for i in group for ip in i.public_ips[:1]]
        outputs[role] = {"private_ip": private[0] if private else "", "public_ip": public[0] if public else "",
                         "private_ips": ",".join(private), "public_ips": ",".join(public),
                         "names": ",".join(i.name for i in group)}
    return outputs


def _create_params(deployment: Deployment, instance: Instance, user_data: str) -> dict[str, Any]:
    return {
        "instance_id": instance.pk,
        "deployment_id": deployment.pk,
        "name": instance.name,
        "image_id": instance.provider_image_id,
        "size_id": instance.flavor_id,
        "public_key": deployment.ssh_public_key or None,
        "key_name": deployment_key_name(deployment) if deployment.ssh_public_key else None,
        "user_data": user_data or None,
        "want_public_ip": bool(instance.ports),
        **({"firewall": {"name": firewall_name(instance), "rules": instance.ports}} if instance.ports else {}),
        "tags": {"skyport:deployment": str(deployment.pk), "skyport:instance": str(instance.pk),
                 "skyport:project": str(deployment.project_id)},
    }


def firewall_name(instance: Instance) -> str:
    """The provider firewall (security group) that opens the ports of one server role of a deployment."""
    return f"skyport-{settings.SKYPORT_INSTALLATION_ID}-d{instance.deployment_id}-{instance.role}"[:255]


def deployment_key_name(deployment: Deployment) -> str:
    """The provider key pair a deployment's public key is imported as (where the provider needs one): its own, so
    deleting the deployment removes it without touching another deployment's."""
    return f"skyport-{settings.SKYPORT_INSTALLATION_ID}-d{deployment.pk}"[:255]


def _next_key(instance: Instance, action: str) -> str:
    prefix = f"d{instance.deployment_id}-i{instance.pk}-"
    done = Operation.objects.all_tenants().filter(organization_id=instance.organization_id,
                                                  idempotency_key__startswith=prefix).count()
    return f"{prefix}{action}-{done + 1}"


def _start_operation(instance: Instance, kind: str, params: dict[str, Any], actor: User | None, *,
                     enqueue: bool = True) -> Operation:
    # the caller may have selected it with the instance (one query for every server)
    account = (instance.account if Instance.account.is_cached(instance)
               else CloudAccount.objects.all_tenants().get(pk=instance.account_id))
    operation = operation_start(account=account, region=instance.region, kind=kind,
                                params={"instance_id": instance.pk, **params},
                                idempotency_key=_next_key(instance, kind), actor=actor,
                                project=instance.project)
    Instance.objects.all_tenants().filter(pk=instance.pk).update(operation=operation)
    instance.operation = operation
    if enqueue:
        operation_enqueue(operation.pk)
    return operation


def deployment_advance(deployment_id: int, *, run_here: list[int] | None = None) -> list[int]:
    """Start creating every pending server whose dependencies all run; returns the instance ids started.
    With `run_here`, the first create operation is not queued but its id appended there, for the caller to run
    after the commit in its own process (`operation_run_here`); the others are queued, so that other workers
    create those servers meanwhile."""
    started: list[int] = []
    with transaction.atomic():
        deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment_id)
        if deployment.state not in (D.PROVISIONING, D.ACTIVE, D.PARTIALLY_FAILED):
            return started
        # with what starting an operation reads (the account, the project): one query for every server
        instances = list(Instance.objects.all_tenants().filter(deployment=deployment).select_related(
            "account", "project").order_by("role", "index"))
        servers = (deployment.placement or {}).get("servers", {})
        running = {role for role in servers
                   if all(i.state == S.RUNNING for i in instances if i.role == role)}
        outputs = _outputs([i for i in instances if i.state == S.RUNNING])
        for instance in instances:
            if instance.state != S.PENDING or instance.operation_id is not None:
                continue
            needs = servers.get(instance.role, {}).get("depends_on", [])
            if not all(role in running for role in needs):
                continue
            user_data = render_outputs(instance.user_data, outputs)
            inline = run_here is not None and not run_here
            operation = _start_operation(instance, "create_server", _create_params(deployment, instance, user_data),
                                         deployment.owner, enqueue=not inline)
            if inline and run_here is not None:
                run_here.append(operation.pk)
            transition(instance, to=S.BUILDING, cause=Cause.LAUNCH)
            started.append(instance.pk)
    return started


# --- following operations --------------------------------------------------------------------------------------------
def instance_operation_follow(operation: Operation) -> None:
    """Called after every run of an operation started for an instance (settings.SKYPORT_OPERATION_FOLLOWERS)."""
    instance_id = (operation.params or {}).get("instance_id")
    if not instance_id:
        return
    with transaction.atomic():
        instance = Instance.objects.all_tenants().select_for_update(of=("self",)).filter(pk=instance_id).first()
        if instance is None:
            return
        server_id = (operation.result or {}).get("server_id")
        if (operation.kind == "create_server" and server_id and not instance.provider_server_id
                and instance.operation_id == operation.pk):
            # recorded as soon as the provider answers: a crash later never leaves the server untracked
            instance.provider_server_id = str(server_id)
            instance.save(update_fields=["provider_server_id", "updated_at"])
        if instance.operation_id != operation.pk:
            return  # a newer operation (a retry, a delete) took over
        # locked after the instance, in the order `transition` takes them: its event number needs no read back
        deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=instance.deployment_id)
        if operation.state in (Operation.State.PENDING, Operation.State.RUNNING):
            deployment_event_locked(deployment, "operation", instance=instance.pk, state=instance.state,
                                    operation=operation.pk)
            return
        if operation.state == Operation.State.SUCCEEDED:
            _follow_success(deployment, instance, operation)
        else:
            _follow_failure(deployment, instance, operation)
        if operation.kind in ("resize_server", "delete_server"):
            quota_rebalance(instance.deployment_id)
    if operation.kind in ("create_server", "delete_server") or operation.state == Operation.State.SUCCEEDED:
        deployment_advance(instance.deployment_id)


def _addresses(instance: Instance, result: dict[str, Any]) -> list[str]:
    fields = []
    if "private_ips" in result:
        instance.private_ips = list(result["private_ips"])
        fields.append("private_ips")
    public = list(result.get("public_ips") or [])
    if result.get("public_ip") and result["public_ip"] not in public:
        public.append(result["public_ip"])
    if public or "public_ips" in result:
        instance.public_ips = public
        fields.append("public_ips")
    if result.get("public_ip_id"):
        instance.public_ip_id = str(result["public_ip_id"])
        fields.append("public_ip_id")
    return fields


def _follow_success(deployment: Deployment, instance: Instance, operation: Operation) -> None:
    from apps.deployments.hooks import hooks_after_launch

    result = operation.result or {}
    kind = operation.kind
    fields = _addresses(instance, result) if kind != "delete_server" else []
    if kind == "resize_server":
        params = operation.params
        instance.flavor_id, instance.size = params["size_id"], params["size"]
        instance.vcpus, instance.ram_mb, instance.disk_gb = params["vcpus"], params["ram_mb"], params["disk_gb"]
        instance.price_per_hour = Decimal(params["price_per_hour"]) if params.get("price_per_hour") else None
        fields += ["flavor_id", "size", "vcpus", "ram_mb", "disk_gb", "price_per_hour"]
    if fields:
        instance.save(update_fields=[*fields, "updated_at"])
    if kind == "delete_server":
        if operation.params.get("then") == "recreate":
            _recreate(deployment, instance)
            return
        transition(instance, to=S.DELETED, cause=Cause.OPERATION)
        if deployment_refresh_state(deployment.pk).state == D.DELETED:
            deployment_release_quota(deployment.pk)
            hooks_after_launch(deployment, "deployment.deleted")
        return
    if instance.state == S.DELETING:
        # deleted while it was being created: now that the server exists, remove it
        _start_delete(instance, actor=None)
        return
    to = DONE_STATE.get(kind) or (S.STOPPED if result.get("state") == "stopped" else S.RUNNING)
    transition(instance, to=to, cause=Cause.OPERATION)
    if kind == "create_server":
        hooks_after_launch(deployment, "instance.running", instance)


def quota_rebalance(deployment_id: int) -> None:
    """After a resize (done or failed), hold exactly what the deployment's servers use: a larger size was reserved
    before the resize; a smaller one, or a failed resize, gives the difference back."""
    live = Instance.objects.all_tenants().filter(deployment_id=deployment_id).exclude(state=S.DELETED)
    held = list(QuotaReservation.objects.all_tenants().select_for_update(of=("self",)).filter(
        deployment_id=deployment_id, released_at__isnull=True))
    if not held:
        return
    exact = Demand(instances=live.count(), vcpus=sum(i.vcpus for i in live), ram_mb=sum(i.ram_mb for i in live),
                   disk_gb=sum(i.disk_gb for i in live))
    have = Demand(*(sum(getattr(r, f) for r in held) for f in ("instances", "vcpus", "ram_mb", "disk_gb")))
    if have == exact:
        return
    for reservation in held:
        quota_release(reservation)
    first = held[0]
    QuotaReservation.objects.create(organization_id=first.organization_id, project_id=first.project_id,
                                    user_id=first.user_id, deployment_id=deployment_id, instances=exact.instances,
                                    vcpus=exact.vcpus, ram_mb=exact.ram_mb, disk_gb=exact.disk_gb)


def _follow_failure(deployment: Deployment, instance: Instance, operation: Operation) -> None:
    message = operation.error or "The provider operation failed."
    if instance.state == S.DELETING and operation.kind != "delete_server":
        # a delete was asked for while this operation ran: it goes ahead whatever this one's outcome
        _start_delete(instance, actor=None)
        return
    if (operation.kind == "create_server" and deployment.policy == Deployment.Policy.ORDERED
            and instance.fallbacks and operation.error_kind in FALLBACK_ERRORS and not instance.provider_server_id):
        _fall_back(deployment, instance, operation)
        return
    if operation.kind == "delete_server" and operation.params.get("then") == "recreate":
        message = f"Could not remove the failed server before creating it again: {message}"
    if instance.state != S.ERROR:
        try:
            transition(instance, to=S.ERROR, cause=Cause.OPERATION, message=message)
        except IllegalTransition:
            log.warning("instance %s: %s failed while %s", instance.pk, operation.kind, instance.state)
    else:
        Instance.objects.all_tenants().filter(pk=instance.pk).update(error=message[:1000])
        deployment_event(deployment, "operation", instance=instance.pk, state=instance.state,
                         operation=operation.pk)


def _fall_back(deployment: Deployment, instance: Instance, failed: Operation) -> None:
    """`ordered`: the cloud refused; move the server to the next candidate and create it there."""
    nxt, rest = instance.fallbacks[0], instance.fallbacks[1:]
    flavor = Flavor.objects.all_tenants().select_related("account").filter(pk=nxt["flavor"]).first()
    if flavor is None:
        instance.fallbacks = rest
        instance.save(update_fields=["fallbacks", "updated_at"])
        _follow_failure(deployment, instance, failed)
        return
    from apps.catalog.profiles import flavor_price

    _cleanup_elsewhere(instance, failed)
    before = f"{instance.account.name}/{instance.region}"
    instance.account_id, instance.region = flavor.account_id, flavor.region
    instance.flavor_id, instance.vcpus, instance.ram_mb = flavor.provider_id, flavor.vcpus, flavor.ram_mb
    instance.price_per_hour, instance.provider_image_id = flavor_price(flavor), nxt["provider_image_id"]
    instance.fallbacks = rest
    instance.save(update_fields=["account", "region", "flavor_id", "vcpus", "ram_mb", "price_per_hour",
                                 "provider_image_id", "fallbacks", "updated_at"])
    placement = dict(deployment.placement or {})
    placement.setdefault("fallbacks", []).append(
        {"instance": instance.name, "from": before, "to": f"{flavor.account.name}/{flavor.region}",
         "reason": failed.error[:300]})
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(placement=placement)
    _start_operation(instance, "create_server", _create_params(deployment, instance, instance.user_data),
                     deployment.owner)
    deployment_event(deployment, "operation", instance=instance.pk, state=instance.state,
                     operation=instance.operation_id)


def _cleanup_elsewhere(instance: Instance, failed: Operation) -> None:
    """A create that failed may still have made a server (the provider acted, then the call failed): before the
    instance moves on, a delete by the failed attempt's tags runs where it was made. It is not the instance's
    operation (nobody follows it): it only removes what carries those tags, if anything."""
    account = CloudAccount.objects.all_tenants().get(pk=failed.account_id)
    cleanup = operation_start(account=account, region=failed.region, kind="delete_server",
                              params={"instance_id": instance.pk, "create_operation_ids": [failed.pk]},
                              idempotency_key=f"{failed.idempotency_key}-cleanup"[:100], project=instance.project)
    operation_enqueue(cleanup.pk)


def _recreate(deployment: Deployment, instance: Instance) -> None:
    instance.provider_server_id, instance.public_ip_id = "", ""
    instance.private_ips, instance.public_ips = [], []
    instance.save(update_fields=["provider_server_id", "public_ip_id", "private_ips", "public_ips", "updated_at"])
    instances = list(Instance.objects.all_tenants().filter(deployment=deployment, state=S.RUNNING))
    user_data = render_outputs(instance.user_data, _outputs(instances))
    _start_operation(instance, "create_server", _create_params(deployment, instance, user_data), deployment.owner)
    transition(instance, to=S.BUILDING, cause=Cause.USER, message="retried")


# --- lifecycle --------------------------------------------------------------------------------------------------
def deployment_can_operate(user: User, deployment: Deployment) -> bool:
    """A project role with deployments.operate reaches the deployments the user owns; somebody else's need an org
    role with the action or a per-object grant (django-guardian `operate_deployment`), as docs/roles.md says."""
    access = get_access(user)
    if not access.can_on("deployments.operate", deployment.project):
        return False
    if deployment.owner_id == user.pk or deployment.organization_id in access.orgs_allowing("deployments.operate"):
        return True
    return bool(user.has_perm("deployments.operate_deployment", deployment))


def _require_operate(actor: User, deployment: Deployment) -> None:
    if not deployment_can_operate(actor, deployment):
        raise PermissionDenied("You may operate only your own deployments here (deployments.operate): ask its "
                               "owner or an organisation admin.")


def _busy(instance: Instance) -> bool:
    op = instance.operation
    return op is not None and op.state in (Operation.State.PENDING, Operation.State.RUNNING)


def _resize_target(instance: Instance, size: str) -> tuple[HardwareProfile, Flavor]:
    profile = _profile_by_size(instance.organization_id, size)
    account = CloudAccount.objects.all_tenants().get(pk=instance.account_id)
    flavors = [f.flavor for f in profile_mapping(profile, organization=account.organization, image=instance.image)
               if f.account.pk == instance.account_id and f.region == instance.region and f.flavor is not None]
    if not flavors or flavors[0] is None:
        raise _invalid("size", f"{account.name}/{instance.region} has no flavor for {profile.name}.")
    return profile, flavors[0]


def instance_action(*, actor: User | None, instance: Instance, action: str, size: str | None = None,
                    cause: str = Cause.USER) -> Instance:
    """Start, stop, reboot or resize one instance: check, move it to the transitional state, start the operation
    (after the commit). Raises ServiceError (nothing changed) when it cannot."""
    if action == "delete":
        return instance_delete(actor=actor, instance=instance, cause=cause)
    if action not in ACTIONS:
        raise _invalid("action", f"Unknown action '{action}': start, stop, reboot, resize or delete.")
    kind, moving, allowed_from = ACTIONS[action]
    with transaction.atomic():
        locked = Instance.objects.all_tenants().select_for_update(of=("self",)).select_related(
            "operation", "deployment", "project").get(pk=instance.pk)
        if actor is not None:
            _require_operate(actor, locked.deployment)
        if _busy(locked):
            raise ServiceError(f"{locked.name} is busy ({locked.state}): wait until it settles.")
        if locked.state not in allowed_from:
            wanted = " or ".join(sorted(allowed_from))
            raise ServiceError(f"{action.capitalize()} needs a {wanted} server; {locked.name} is {locked.state}.")
        if not locked.provider_server_id:
            raise ServiceError(f"{locked.name} has no server at the provider yet.")
        params: dict[str, Any] = {"server_id": locked.provider_server_id}
        if action == "resize":
            if not size:
                raise _invalid("size", "Choose the size to resize to.")
            profile, flavor = _resize_target(locked, size)
            if flavor.provider_id == locked.flavor_id:
                raise _invalid("size", f"{locked.name} already has size {profile.slug}.")
            from apps.catalog.profiles import flavor_price

            price = flavor_price(flavor)
            params.update(size_id=flavor.provider_id, size=profile.slug, vcpus=flavor.vcpus, ram_mb=flavor.ram_mb,
                          disk_gb=max(flavor.disk_gb, profile.disk_gb),
                          price_per_hour=str(price) if price is not None else None)
            extra = Demand(vcpus=max(0, flavor.vcpus - locked.vcpus), ram_mb=max(0, flavor.ram_mb - locked.ram_mb),
                           disk_gb=max(0, params["disk_gb"] - locked.disk_gb))
            if extra.vcpus or extra.ram_mb or extra.disk_gb:
                try:
                    quota_reserve(project=locked.project, user=locked.deployment.owner, demand=extra,
                                  deployment=locked.deployment)
                except QuotaExceeded as exc:
                    raise _invalid("size", exc.messages[0]) from None
        if action == "reboot":
            params["hard"] = False
        if action == "resize" and locked.state == S.STOPPED:
            params["keep_stopped"] = True  # no stop before, no start after: it stays stopped (and free)
        _start_operation(locked, kind, params, actor)
        transition(locked, to=moving, cause=cause)
        if actor is not None:
            audit.record(actor=actor, verb=f"instance.{action}", obj=locked.deployment,
                         extra={"instance": locked.name, **({"size": size} if size else {})})
    return locked


def _creates_of(instance: Instance) -> list[int]:
    """Every create operation started for the instance in its current account-region, oldest first."""
    return list(Operation.objects.all_tenants().filter(
        organization_id=instance.organization_id, kind="create_server", params__instance_id=instance.pk,
        account_id=instance.account_id, region=instance.region,
    ).order_by("pk").values_list("pk", flat=True))


def _start_delete(instance: Instance, *, actor: User | None, then: str = "") -> None:
    """Start the delete operation of an instance that has (or may have) a server at the provider."""
    params: dict[str, Any] = {}
    if instance.provider_server_id:
        params["server_id"] = instance.provider_server_id
    if instance.public_ip_id:
        params["public_ip_id"] = instance.public_ip_id
    creates = _creates_of(instance)
    if creates:
        # whatever any create made for it, committed or not, is found again by its tags
        params["create_operation_ids"] = creates
    if then:
        params["then"] = then
    if not params.get("server_id") and not creates:
        return
    deployment = Deployment.objects.all_tenants().get(pk=instance.deployment_id)
    if not then:
        others = Instance.objects.all_tenants().filter(
            deployment_id=deployment.pk, account_id=instance.account_id, region=instance.region,
        ).exclude(pk=instance.pk).exclude(state__in=[S.DELETED, S.DELETING])
        if deployment.ssh_public_key and not others.exists():
            # the last server of the deployment there: its key pair goes too
            params.update(key_name=deployment_key_name(deployment), delete_key_pair=True)
        if instance.ports and not others.filter(role=instance.role).exists():
            params["firewall_name"] = firewall_name(instance)  # and the firewall of its role
    _start_operation(instance, "delete_server", params, actor)


def instance_delete(*, actor: User | None, instance: Instance, cause: str = Cause.USER) -> Instance:
    """Delete one instance and what Skyport created for it (its address), whatever state it is in."""
    with transaction.atomic():
        locked = Instance.objects.all_tenants().select_for_update(of=("self",)).select_related(
            "operation", "deployment").get(pk=instance.pk)
        if actor is not None:
            _require_operate(actor, locked.deployment)
        _delete_locked(locked, actor=actor, cause=cause)
    return locked


def _delete_locked(instance: Instance, *, actor: User | None, cause: str) -> None:
    if instance.state in (S.DELETED, S.DELETING):
        return
    op = instance.operation
    if op is not None and op.state in (Operation.State.PENDING, Operation.State.RUNNING):
        if not operation_cancel(op.pk, "Cancelled: the server is being deleted."):
            # a worker is inside a provider call: its follower starts the delete when the call returns
            transition(instance, to=S.DELETING, cause=cause)
            return
        op.refresh_from_db()
        if op.result.get("server_id") and not instance.provider_server_id:
            instance.provider_server_id = str(op.result["server_id"])
            instance.save(update_fields=["provider_server_id", "updated_at"])
    has_server = bool(instance.provider_server_id) or Operation.objects.all_tenants().filter(
        organization_id=instance.organization_id, kind="create_server", params__instance_id=instance.pk).exists()
    if not has_server:
        transition(instance, to=S.DELETED, cause=cause, message="never created at the provider")
        return
    transition(instance, to=S.DELETING, cause=cause)
    _start_delete(instance, actor=actor)


def deployment_delete(*, actor: User | None, deployment: Deployment, cause: str = Cause.USER,
                      message: str = "") -> Deployment:
    """Delete every server of the deployment and what Skyport created for them; the quota is given back when the
    last one is gone. Before launch, it is a cancel."""
    if actor is not None:
        _require_operate(actor, deployment)
    with transaction.atomic():
        locked = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment.pk)
        if locked.state in (D.REQUESTED, D.PENDING_APPROVAL):
            return deployment_cancel(actor=actor, deployment=locked)
        if locked.state in ENDED:
            return locked
        locked.state = D.DELETING
        locked.state_message = message[:1000]
        locked.save(update_fields=["state", "state_message", "updated_at"])
        deployment_event(locked, "state")
        for instance in Instance.objects.all_tenants().select_for_update(of=("self",)).select_related(
                "operation").filter(deployment=locked).exclude(state=S.DELETED):
            _delete_locked(instance, actor=actor, cause=cause)
        refreshed = deployment_refresh_state(locked.pk)
        if refreshed.state == D.DELETED:
            deployment_release_quota(locked.pk)
        if actor is not None:
            audit.record(actor=actor, verb="deployment.delete", obj=locked)
    return Deployment.objects.all_tenants().get(pk=deployment.pk)


def deployment_cancel(*, actor: User | None, deployment: Deployment) -> Deployment:
    """Before launch: withdraw the request. During provisioning or after a partial failure: stop the work in flight
    and remove everything created so far."""
    if actor is not None:
        _require_operate(actor, deployment)
    with transaction.atomic():
        locked = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment.pk)
        who = actor.username if actor is not None else "Skyport"
        if locked.state in (D.REQUESTED, D.PENDING_APPROVAL):
            Approval.objects.all_tenants().filter(deployment=locked, state=Approval.State.PENDING).update(
                state=Approval.State.CANCELLED, decided_at=timezone.now())
            _end_before_launch(locked, D.CANCELLED, f"Cancelled by {who}.")
            if actor is not None:
                audit.record(actor=actor, verb="deployment.cancel", obj=locked)
            return locked
        if locked.state not in (D.PROVISIONING, D.PARTIALLY_FAILED):
            raise ServiceError(f"Only a launch in progress or partly failed can be cancelled; {locked.name} is "
                               f"{locked.get_state_display().lower()}. Delete it instead.")
    return deployment_delete(actor=actor, deployment=locked, cause=Cause.CANCEL,
                             message=f"Cancelled by {who} during the launch.")


def deployment_retry_failed(*, actor: User, deployment: Deployment) -> list[Instance]:
    """Create the failed servers again (removing what the failed attempt left at the provider first)."""
    _require_operate(actor, deployment)
    retried = []
    with transaction.atomic():
        locked = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment.pk)
        if locked.state != D.PARTIALLY_FAILED:
            raise ServiceError(f"Only a partly failed deployment has servers to retry; {locked.name} is "
                               f"{locked.get_state_display().lower()}.")
        for instance in Instance.objects.all_tenants().select_for_update(of=("self",)).select_related(
                "operation").filter(deployment=locked, state=S.ERROR):
            if _busy(instance):
                continue
            if instance.provider_server_id or instance.public_ip_id or _creates_of(instance):
                # a failed create may still have made a server: remove what any attempt made first
                _start_delete(instance, actor=actor, then="recreate")
            else:
                _recreate(locked, instance)
            retried.append(instance)
        audit.record(actor=actor, verb="deployment.retry", obj=locked, extra={"instances": len(retried)})
    return retried


def deployment_action(*, actor: User, deployment: Deployment, action: str, size: str | None = None) -> list[str]:
    """Apply an action to every instance of the deployment it applies to. Returns the names acted on; raises
    ServiceError when it applies to none."""
    _require_operate(actor, deployment)
    if action == "delete":
        deployment_delete(actor=actor, deployment=deployment)
        return [i.name for i in deployment.instances.all()]
    if action not in ACTIONS:
        raise _invalid("action", f"Unknown action '{action}': start, stop, reboot, resize or delete.")
    if deployment.state in ENDED or deployment.state == D.DELETING:
        raise ServiceError(f"{deployment.name} is {deployment.get_state_display().lower()}.")
    done, problems = [], []
    for instance in Instance.objects.all_tenants().filter(deployment=deployment).exclude(state=S.DELETED):
        if instance.state not in ACTIONS[action][2]:
            continue
        try:
            instance_action(actor=actor, instance=instance, action=action, size=size)
            done.append(instance.name)
        except ServiceError as exc:
            problems.append(f"{instance.name}: {exc.messages[0]}")
    if not done:
        raise ServiceError(problems or [f"No server of {deployment.name} can {action} now."])
    return done


def deployment_extend(*, actor: User, deployment: Deployment, days: Any) -> Deployment:
    _require_operate(actor, deployment)
    item = deployment.catalog_item
    expires, _action = _lease(item, days)
    if expires is None:
        raise _invalid("lease_days", "Give the number of days.")
    if deployment.state in ENDED or deployment.state == D.DELETING:
        raise ServiceError(f"{deployment.name} is {deployment.get_state_display().lower()}.")
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(
        lease_expires_at=expires, lease_reminded_at=None,
        lease_action=deployment.lease_action or (item.lease_action if item else "stop"))
    audit.record(actor=actor, verb="deployment.extend", obj=deployment, extra={"until": expires.isoformat()})
    deployment.refresh_from_db()
    deployment_event(deployment, "state")
    return deployment


def deployment_transfer(*, actor: User, deployment: Deployment, new_owner: User) -> Deployment:
    """Hand the deployment to another member of its project: usage from now on is charged to them (a snapshot
    transition is recorded for every instance at this moment)."""
    _require_operate(actor, deployment)
    if new_owner.pk == deployment.owner_id:
        raise _invalid("owner", f"{new_owner.username} already owns {deployment.name}.")
    if not new_owner.is_active or not get_access(new_owner).can_on("deployments.launch", deployment.project):
        raise _invalid("owner", f"{new_owner.username} cannot launch in {deployment.project.name}: only project "
                                "members who may launch can own a deployment.")
    now = timezone.now()
    with transaction.atomic():
        Deployment.objects.all_tenants().filter(pk=deployment.pk).update(owner=new_owner)
        for instance in Instance.objects.all_tenants().select_for_update(of=("self",)).filter(
                deployment=deployment).exclude(state=S.DELETED):
            instance.owner = new_owner
            instance.save(update_fields=["owner", "updated_at"])
            InstanceTransition.objects.create(
                organization_id=instance.organization_id, project_id=instance.project_id, instance=instance,
                from_state=instance.state, to_state=instance.state, cause=Cause.TRANSFER,
                message=f"from {deployment.owner.username} to {new_owner.username}", observed_at=now,
                detected_at=now, owner=new_owner, account_id=instance.account_id, region=instance.region,
                flavor_id=instance.flavor_id, size=instance.size, vcpus=instance.vcpus, ram_mb=instance.ram_mb,
                disk_gb=instance.disk_gb, price_per_hour=instance.price_per_hour,
            )
        audit.record(actor=actor, verb="deployment.transfer", obj=deployment,
                     extra={"from": deployment.owner.username, "to": new_owner.username})
        deployment.refresh_from_db()
        deployment_event(deployment, "state")
    return deployment


def instance_console(*, actor: User, instance: Instance) -> Any:
    """The console of a running server: a URL (OpenStack noVNC) or its console output (EC2, sim). A read: no
    operation, no transaction."""
    from apps.clouds.drivers import driver_for
    from apps.clouds.drivers.base import CloudError

    _require_operate(actor, instance.deployment)
    if not instance.provider_server_id or instance.state in (S.DELETED, S.DELETING, S.PENDING):
        raise ServiceError(f"{instance.name} has no console now ({instance.state}).")
    from apps.clouds.drivers.base import scrub_secrets

    driver = driver_for(instance.account, instance.region)
    try:
        return driver.console(instance.provider_server_id)
    except CloudError as exc:
        message = scrub_secrets(exc.message, driver.credentials)
        raise ServiceError(f"The provider could not open the console: {message}") from None


# --- leases ---------------------------------------------------------------------------------------------------------
REMIND_BEFORE = datetime.timedelta(hours=24)


def leases_enforce(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """Remind owners a day before their lease ends; at the end, stop or delete as the catalog item says."""
    from apps.accounts.services import notification_send

    now = now or timezone.now()
    counts = {"reminded": 0, "stopped": 0, "deleted": 0}
    live = Deployment.objects.all_tenants().filter(lease_expires_at__isnull=False).exclude(
        state__in=[*ENDED, D.DELETING, D.PENDING_APPROVAL, D.REQUESTED])
    for deployment in live.filter(lease_expires_at__gt=now, lease_expires_at__lte=now + REMIND_BEFORE,
                                  lease_reminded_at__isnull=True).select_related("owner"):
        if Deployment.objects.all_tenants().filter(pk=deployment.pk, lease_reminded_at__isnull=True).update(
                lease_reminded_at=now):
            what = "deleted" if deployment.lease_action == "delete" else "stopped"
            notification_send(recipient=deployment.owner, organization_id=deployment.organization_id,
                              level="warning", email=True, link=f"/deployments/{deployment.pk}/",
                              text=f"The lease of {deployment.name} ends {deployment.lease_expires_at:%Y-%m-%d %H:%M}"
                                   f" UTC: it will be {what}. Extend it if you still need it.")
            counts["reminded"] += 1
    for deployment in live.filter(lease_expires_at__lte=now).exclude(lease_action="").select_related("owner"):
        action = deployment.lease_action
        # once: the lease's action is consumed (extending the lease sets it again)
        if not Deployment.objects.all_tenants().filter(pk=deployment.pk, lease_action=action).update(
                lease_action=""):
            continue
        if action == "delete":
            deployment_delete(actor=None, deployment=deployment, cause=Cause.LEASE, message="The lease ended.")
            counts["deleted"] += 1
        else:
            for instance in Instance.objects.all_tenants().filter(deployment=deployment, state=S.RUNNING):
                try:
                    instance_action(actor=None, instance=instance, action="stop", cause=Cause.LEASE)
                except ServiceError:
                    log.info("lease of %s: %s could not be stopped now", deployment.pk, instance.name)
            counts["stopped"] += 1
        notification_send(recipient=deployment.owner, organization_id=deployment.organization_id,
                          level="warning", email=True, link=f"/deployments/{deployment.pk}/",
                          text=f"The lease of {deployment.name} ended: it is being "
                               f"{'deleted' if action == 'delete' else 'stopped'}.")
    return counts
