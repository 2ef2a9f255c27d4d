"""The reconciler: what the providers say about Skyport's servers, brought into the instance rows.

One sweep covers one account-region. It takes that account-region's lease (a conditional UPDATE of its SweepState,
so two workers never sweep the same one), records when it started, makes ONE `list_servers()` call, and then settles
every instance of that account-region that is not deleted:

- an instance whose operation is live (pending, or running under a live lease) is left to the operation, which
  applies its own result; only its `last_synced_at` moves;
- an observation is applied only when the instance's last local transition is older than the start of the list
  call: a list that started before a local "stopping" must not overwrite it with "running";
- the natural end of a transitional state (building → running, stopping → stopped, ...) is recorded with cause
  PROVIDER, any other change (running → stopped, running → error, stopped → running) with cause DRIFT;
- a server missing from one list is not deleted: on the second miss a direct `get_server` decides;
- a server created by an operation whose worker died before recording its id is found by the operation's tags and
  adopted, so it is neither left untracked nor created a second time;
- an instance stuck in a transitional state with no live operation ends in error after SKYPORT_STUCK_SECONDS;
- servers Skyport does not track are listed as UnmanagedServer rows, never deleted at the provider.

Then the account-region's next sweep is set: soon while something is moving or someone watches, rarely otherwise,
backing off while the provider throttles or fails. Every provider call is made with no database transaction open;
each instance is then changed in its own short transaction, under its row lock, after checking again that nothing
changed meanwhile.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Case, CharField, F, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import Organization, Project, User
from apps.clouds.drivers import driver_for
from apps.clouds.drivers.base import (
    AuthError,
    CloudDriver,
    CloudError,
    NotFoundError,
    Server,
    ServerState,
    TransientError,
    scrub_secrets,
)
from apps.clouds.models import CloudAccount, Flavor, Health, Operation
from apps.clouds.operations import TAG_INSTALLATION, TAG_OPERATION, in_transaction
from apps.core import audit
from apps.core.crypto import DecryptionError
from apps.core.permissions import ServiceError, require
from apps.deployments.events import deployment_event
from apps.deployments.models import Deployment, Instance, InstanceTransition, SweepState, UnmanagedServer
from apps.deployments.presence import watched
from apps.deployments.quotas import Demand, QuotaExceeded, quota_reserve
from apps.deployments.states import (
    DECIDED_WITHOUT_INSTANCES,
    TRANSITIONAL,
    DeploymentState,
    InstanceState,
    can_move,
)
from apps.deployments.transitions import IllegalTransition, transition

log = logging.getLogger(__name__)

S = InstanceState
Cause = InstanceTransition.Cause

TAG_INSTANCE = "skyport:instance"
FAST_SECONDS = 5
SLOW_SECONDS = 300
STUCK_SECONDS = 30 * 60
# long enough for one list plus the direct look-ups of a large region; a worker that dies frees it this late
SWEEP_LEASE_SECONDS = 120
# between two sweeps of an account-region, the servers of its watched deployments are looked up,
# at most this many, at most every LOOK_UP_SECONDS (one DescribeInstances per account-region on EC2)
WATCHED_LOOK_UPS = 20
LOOK_UP_SECONDS = 1
# no look-up this close after a sweep finished or before the next starts: the sweep covers those moments
LOOK_UP_CLEAR_AFTER_SWEEP = datetime.timedelta(seconds=1)
LOOK_UP_CLEAR_BEFORE_SWEEP = datetime.timedelta(seconds=0.5)
# consecutive failed sweeps before the account shows as degraded (an auth failure shows at once as failing)
DEGRADED_AFTER_FAILURES = 3
HEALTH_PREFIX = "Server sync in "
LIVE_OPERATION_STATES = (Operation.State.PENDING, Operation.State.RUNNING)

# what the provider says → what the instance is (UNKNOWN: the provider does not say, nothing is concluded)
PROVIDER_STATES: dict[str, str | None] = {
    ServerState.PENDING: S.BUILDING,
    ServerState.BUILDING: S.BUILDING,
    ServerState.RUNNING: S.RUNNING,
    ServerState.STOPPING: S.STOPPING,
    ServerState.STOPPED: S.STOPPED,
    ServerState.STARTING: S.STARTING,
    ServerState.REBOOTING: S.REBOOTING,
    ServerState.RESIZING: S.RESIZING,
    ServerState.VERIFY_RESIZE: S.RESIZING,
    ServerState.DELETING: S.DELETING,
    ServerState.DELETED: S.DELETED,
    ServerState.ERROR: S.ERROR,
    ServerState.UNKNOWN: None,
}
# transitional state → the states it ends in by itself: reaching one is the provider finishing what was asked
NATURAL_END: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.BUILDING}),
    S.BUILDING: frozenset({S.RUNNING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STARTING: frozenset({S.RUNNING}),
    S.REBOOTING: frozenset({S.RUNNING}),
    S.RESIZING: frozenset({S.RUNNING, S.STOPPED}),
    S.DELETING: frozenset({S.DELETED}),
}
DRIFT_WORDS: dict[str, str] = {
    S.RUNNING: "started",
    S.STOPPED: "stopped",
    S.STOPPING: "being stopped",
    S.STARTING: "being started",
    S.REBOOTING: "rebooted",
    S.RESIZING: "resized",
    S.BUILDING: "rebuilt",
    S.DELETING: "being deleted",
    S.DELETED: "deleted",
}


def fast_seconds() -> int:
    return int(getattr(settings, "SKYPORT_SWEEP_FAST_SECONDS", FAST_SECONDS))


def slow_seconds() -> int:
    return int(getattr(settings, "SKYPORT_SWEEP_SLOW_SECONDS", SLOW_SECONDS))


def stuck_seconds() -> int:
    return int(getattr(settings, "SKYPORT_STUCK_SECONDS", STUCK_SECONDS))


class ReconcilerInTransactionError(RuntimeError):
    """A sweep or resync was called with a database transaction open: its provider calls would be made inside it."""


@dataclass
class SweepResult:
    """What one sweep of one account-region did (counts of instances unless said otherwise)."""

    account_id: int
    region: str
    ok: bool = True
    error: str = ""
    servers_seen: int = 0  # servers in the provider's list
    synced: int = 0  # observations applied (with or without a change)
    skipped: int = 0  # a live operation owns them
    stale: int = 0  # changed locally after the list started: left alone
    transitions: int = 0  # transition rows recorded
    adopted: int = 0  # found by their create operation's tags
    missing: int = 0  # not in the list this time
    deleted: int = 0  # gone at the provider
    stuck: int = 0  # ended in error after the stuck timeout
    unmanaged: int = 0  # servers listed that Skyport does not track
    next_sweep_at: datetime.datetime | None = None


# --- deciding ------------------------------------------------------------------------------------------------------


class Seen(enum.Enum):
    SERVER = "server"  # the provider showed the server (in the list, or to a direct look-up)
    ADOPT = "adopt"  # a server found by the tags of the instance's create operation
    MISSING = "missing"  # not in the list
    GONE = "gone"  # the direct look-up says it does not exist
    NOTHING = "nothing"  # nothing to observe (no server id, none found): only the stuck rule applies


@dataclass(frozen=True)
class Observation:
    kind: Seen
    at: datetime.datetime  # when the provider call that saw it started
    server: Server | None = None


@dataclass(frozen=True)
class Move:
    to: str
    cause: str
    message: str = ""


@dataclass
class Decision:
    kind: str  # skipped, stale, synced, missing, idle
    moves: list[Move] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    # the provider's flavor when the server was resized outside Skyport (its usage is charged at the new size)
    resized_to: str = ""

    @property
    def only_touches(self) -> bool:
        """Nothing but freshness changes: many of these are written with one UPDATE."""
        return not self.moves and not self.resized_to and set(self.fields) <= {"last_synced_at"}


def operation_live(operation: Operation | None, now: datetime.datetime) -> bool:
    """Pending (it will run, or is parked waiting for the provider), or running under a lease that has not expired."""
    if operation is None:
        return False
    if operation.state == Operation.State.PENDING:
        return True
    return (
        operation.state == Operation.State.RUNNING
        and operation.lease_expires_at is not None
        and operation.lease_expires_at >= now
    )


def _state_since(instance: Instance) -> datetime.datetime:
    return instance.state_changed_at or instance.last_transition_at or instance.created_at


def _drift_message(current: str, target: str, server: Server | None) -> str:
    if target == S.ERROR:
        fault = server.fault if server is not None else ""
        return fault or "The provider reports the server in error without giving a reason."
    if target == S.DELETED:
        return "deleted outside Skyport"
    if current == S.ERROR:
        return f"{target} again at the provider"
    if current in TRANSITIONAL:
        return f"the provider reports it {target} (Skyport had it {current})"
    return f"{DRIFT_WORDS.get(target, target)} outside Skyport"


def moves_towards(current: str, target: str, server: Server | None = None) -> list[Move]:
    """The recorded moves that bring an instance from `current` to what the provider shows."""
    if target == current:
        return []
    if target in NATURAL_END.get(current, frozenset()):
        return [Move(target, Cause.PROVIDER)]
    if current == S.ERROR and target in TRANSITIONAL:
        return []  # still the provider's same attempt (a build stuck, say): the error stands until it settles
    if can_move(current, target):
        return [Move(target, Cause.DRIFT, _drift_message(current, target, server))]
    if current == S.PENDING and can_move(S.BUILDING, target):
        # the build started before Skyport recorded it (a create whose worker died, then adopted)
        return [Move(S.BUILDING, Cause.PROVIDER), *moves_towards(S.BUILDING, target, server)]
    if target in TRANSITIONAL:
        return []  # wait for the provider to settle
    if can_move(current, S.ERROR):
        return [Move(S.ERROR, Cause.DRIFT, f"The provider reports the server {target} while Skyport had it {current}.")]
    return []


def _stuck_move(instance: Instance, state: str, since: datetime.datetime, now: datetime.datetime,
                deployment_state: str) -> Move | None:
    if state not in TRANSITIONAL or deployment_state in DECIDED_WITHOUT_INSTANCES:
        return None  # an instance waiting for an approval is not stuck
    if state == S.PENDING and instance.operation_id is None:
        return None  # waiting for the servers it depends on (or for the launch): nothing is asked of the provider
    elapsed = (now - since).total_seconds()
    if elapsed <= stuck_seconds():
        return None
    return Move(S.ERROR, Cause.TIMEOUT, f"Stuck in {state} for {int(elapsed // 60)} minutes")


def decide(instance: Instance, observation: Observation, *, now: datetime.datetime,
           deployment_state: str) -> Decision:
    """What to do with one instance given what the provider said. Pure: the caller applies it (under the lock)."""
    if instance.state == S.DELETED:
        return Decision("idle")
    if operation_live(instance.operation, now):
        return Decision("skipped", fields={"last_synced_at": now})
    local = instance.last_transition_at
    if (local is not None and local >= observation.at) or instance.created_at >= observation.at:
        return Decision("stale")
    decision = Decision("synced")
    target: str | None = None
    server = observation.server
    if observation.kind is Seen.MISSING:
        decision.kind = "missing"
        decision.fields["missed_syncs"] = min(instance.missed_syncs + 1, 1000)
    elif observation.kind is Seen.GONE:
        target = S.DELETED
        decision.fields.update(last_synced_at=now, missed_syncs=0)
    elif observation.kind in (Seen.SERVER, Seen.ADOPT) and server is not None:
        if observation.kind is Seen.ADOPT:
            decision.fields["provider_server_id"] = server.id
        target = PROVIDER_STATES.get(server.state)
        decision.fields["last_synced_at"] = now
        if instance.missed_syncs:
            decision.fields["missed_syncs"] = 0
        private, public = list(server.private_ips), list(server.public_ips)
        if private != list(instance.private_ips or []):
            decision.fields["private_ips"] = private
        if public != list(instance.public_ips or []):
            decision.fields["public_ips"] = public
        settled = {S.RUNNING, S.STOPPED}
        if (server.size_id and instance.flavor_id and server.size_id != instance.flavor_id
                and instance.state in settled and target in settled):
            decision.resized_to = server.size_id
    else:
        decision.kind = "idle"
    if target is not None:
        decision.moves = moves_towards(instance.state, target, server)
    if not decision.moves:
        stuck = _stuck_move(instance, instance.state, _state_since(instance), now, deployment_state)
        if stuck is not None:
            decision.moves = [stuck]
    return decision


@dataclass
class Outcome:
    kind: str
    transitions: int = 0
    adopted: bool = False
    deleted: bool = False
    stuck: bool = False
    deployment_id: int | None = None


def _rows() -> QuerySet[Instance]:
    # the reconciler is system work across tenants; who may ask for a resync is checked by the resync services
    return Instance.objects.all_tenants()


def settle(instance_id: int, observation: Observation) -> Outcome:
    """Apply an observation to one instance: locked and read again, decided again on what it is now, then moved
    through `transition()` and updated in the same short transaction."""
    with transaction.atomic():
        locked = (
            _rows().select_for_update(of=("self",)).select_related("operation")
            .annotate(deployment_state=F("deployment__state")).get(pk=instance_id)
        )
        now = timezone.now()
        decision = decide(locked, observation, now=now, deployment_state=locked.deployment_state)
        outcome = Outcome(decision.kind, deployment_id=locked.deployment_id)
        if decision.fields:
            if "provider_server_id" in decision.fields:
                clash = _rows().filter(account_id=locked.account_id, region=locked.region,
                                       provider_server_id=decision.fields["provider_server_id"]).exclude(
                    pk=locked.pk).exclude(state=S.DELETED)
                if clash.exists():  # another instance already tracks it: never two rows for one server
                    decision.fields.pop("provider_server_id")
                    return Outcome("idle", deployment_id=locked.deployment_id)
                outcome.adopted = True
            _rows().filter(pk=locked.pk).update(**decision.fields)
        for move in decision.moves:
            try:
                row = transition(locked, to=move.to, cause=move.cause, message=move.message,
                                 observed_at=observation.at if move.cause != Cause.TIMEOUT else now)
            except IllegalTransition:
                log.warning("instance %s: %s → %s refused by the state machine", locked.pk, locked.state, move.to)
                break
            if row is not None:
                outcome.transitions += 1
                outcome.deleted = outcome.deleted or move.to == S.DELETED
                outcome.stuck = outcome.stuck or move.cause == Cause.TIMEOUT
        if decision.resized_to:
            _record_outside_resize(locked, decision.resized_to, observation.at)
            outcome.transitions += 1
        return outcome


def _record_outside_resize(locked: Instance, flavor_id: str, observed_at: datetime.datetime) -> None:
    """A server resized in the provider's console: take its new shape and price from the account-region's flavor
    list, record a same-state snapshot (usage is charged at the new size from then on, as after a transfer), hold
    the quota it now uses, and tell the pages."""
    from apps.clouds.models import Flavor
    from apps.deployments.services import quota_rebalance

    flavor = Flavor.objects.all_tenants().filter(account_id=locked.account_id, region=locked.region,
                                   provider_id=flavor_id).first()
    before = locked.flavor_id
    locked.flavor_id = flavor_id
    fields = ["flavor_id", "updated_at"]
    if flavor is not None:
        locked.vcpus, locked.ram_mb, locked.disk_gb = flavor.vcpus, flavor.ram_mb, flavor.disk_gb
        locked.price_per_hour = flavor.price_per_hour
        fields += ["vcpus", "ram_mb", "disk_gb", "price_per_hour"]
    locked.save(update_fields=fields)
    now = timezone.now()
    known = f"{flavor.name}" if flavor is not None else f"{flavor_id} (not in the flavor list: size and price kept)"
    InstanceTransition.objects.create(
        organization_id=locked.organization_id, project_id=locked.project_id, instance=locked,
        from_state=locked.state, to_state=locked.state, cause=Cause.DRIFT,
        message=f"resized outside Skyport from {before} to {known}"[:500], observed_at=observed_at, detected_at=now,
        owner_id=locked.owner_id, account_id=locked.account_id, region=locked.region, flavor_id=locked.flavor_id,
        size=locked.size, vcpus=locked.vcpus, ram_mb=locked.ram_mb, disk_gb=locked.disk_gb,
        price_per_hour=locked.price_per_hour,
    )
    quota_rebalance(locked.deployment_id)
    deployment_event(locked.deployment, "sync", instance=locked.pk, state=locked.state)


def _touch(instance_ids: list[int], started_at: datetime.datetime, now: datetime.datetime) -> None:
    """Freshness for the instances whose observation changes nothing, in one UPDATE that still refuses to mark one
    that changed locally since the list started."""
    if instance_ids:
        unchanged = Q(last_transition_at__isnull=True) | Q(last_transition_at__lt=started_at)
        _rows().filter(pk__in=instance_ids).filter(unchanged).update(last_synced_at=now)


def _create_operation_id(instance: Instance) -> int | None:
    operation = instance.operation
    if operation is None:
        return None
    if operation.kind == "create_server":
        return operation.pk
    created_by = (operation.params or {}).get("create_operation_id")
    return int(created_by) if created_by else None


def _find_created(instance: Instance, servers: Iterable[Server]) -> Server | None:
    """The server the instance's create operation made, by the tags it carried from its creation."""
    ours = settings.SKYPORT_INSTALLATION_ID
    operation_id = _create_operation_id(instance)
    for server in servers:
        tags = server.tags or {}
        if tags.get(TAG_INSTALLATION) != ours:
            continue
        if operation_id is not None and tags.get(TAG_OPERATION) == str(operation_id):
            return server
        if tags.get(TAG_INSTANCE) == str(instance.pk):
            return server
    return None


# --- the sweep -----------------------------------------------------------------------------------------------------


def sweep_state(account_id: int, region: str) -> SweepState:
    try:
        with transaction.atomic():
            state, _ = SweepState.objects.get_or_create(account_id=account_id, region=region)
    except IntegrityError:  # created by a concurrent worker
        state = SweepState.objects.get(account_id=account_id, region=region)
    return state


def sweep_claim(state_id: int, *, worker_id: str, now: datetime.datetime) -> bool:
    """Take the account-region's lease: free, or left by a worker that died. Records the start of the sweep."""
    free = Q(lease_owner="") | Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    claimed = SweepState.objects.filter(pk=state_id).filter(free).update(
        lease_owner=worker_id[:64], lease_expires_at=now + datetime.timedelta(seconds=SWEEP_LEASE_SECONDS),
        last_started_at=now,
    )
    return claimed == 1


def _mine(state_id: int, worker_id: str) -> QuerySet[SweepState]:
    return SweepState.objects.filter(pk=state_id, lease_owner=worker_id[:64])


def sweep(account: CloudAccount, region: str, *, worker_id: str) -> SweepResult | None:
    """Reconcile one account-region (see the module's docstring). None when another worker holds its lease."""
    if in_transaction():
        raise ReconcilerInTransactionError(
            "sweep must be called with no database transaction open: run it from a task."
        )
    state = sweep_state(account.pk, region)
    started_at = timezone.now()  # before the provider call: observations older than a local change are dropped
    if not sweep_claim(state.pk, worker_id=worker_id, now=started_at):
        return None
    result = SweepResult(account_id=account.pk, region=region)
    try:
        account = CloudAccount.objects.all_tenants().get(pk=account.pk)
        try:
            driver = driver_for(account, region)
            servers = driver.list_servers()
        except CloudError as exc:
            return _sweep_failed(state, worker_id, account, region, result, exc)
        except DecryptionError as exc:  # the key that encrypted the credentials is gone: like a rejected key
            return _sweep_failed(state, worker_id, account, region, result, AuthError(str(exc)))
        result.servers_seen = len(servers)
        _reconcile(account, region, driver, servers, started_at, result)
        return _sweep_succeeded(state, worker_id, account, region, result)
    except Exception as exc:
        log.exception("sweep of account %s region %s failed", account.pk, region)
        failure = CloudError(f"Internal error during the sync ({type(exc).__name__}); see the server log.")
        return _sweep_failed(state, worker_id, account, region, result, failure)


def _reconcile(account: CloudAccount, region: str, driver: CloudDriver, servers: list[Server],
               started_at: datetime.datetime, result: SweepResult) -> None:
    instances = list(
        _rows().filter(account_id=account.pk, region=region).exclude(state=S.DELETED)
        .select_related("operation").annotate(deployment_state=F("deployment__state")).order_by("pk")
    )
    by_id = {server.id: server for server in servers}
    now = timezone.now()
    # the rows carry the `deployment_state` annotation
    plans: list[tuple[Any, Observation]] = []
    look_up: list[tuple[Any, Observation]] = []
    for instance in instances:
        if operation_live(instance.operation, now):
            plans.append((instance, Observation(Seen.NOTHING, started_at)))
        elif instance.provider_server_id:
            server = by_id.get(instance.provider_server_id)
            if server is not None:
                plans.append((instance, Observation(Seen.SERVER, started_at, server)))
            else:
                result.missing += 1
                missing = Observation(Seen.MISSING, started_at)
                if instance.missed_syncs + 1 >= 2:
                    look_up.append((instance, missing))
                else:
                    plans.append((instance, missing))
        else:
            found = _find_created(instance, servers)
            kind = Seen.ADOPT if found is not None else Seen.NOTHING
            plans.append((instance, Observation(kind, started_at, found)))
    # second misses: a direct look-up decides (made here, before any transaction opens)
    for instance, missing in look_up:
        asked_at = timezone.now()
        try:
            server = driver.get_server(instance.provider_server_id)
        except NotFoundError:
            plans.append((instance, Observation(Seen.GONE, asked_at)))
        except CloudError as exc:
            log.info("instance %s: look-up after two misses failed: %s", instance.pk, exc.message)
            plans.append((instance, missing))
        else:
            plans.append((instance, Observation(Seen.SERVER, asked_at, server)))

    touched: list[int] = []
    moved_deployments: set[int] = set()
    for instance, observation in plans:
        decision = decide(instance, observation, now=now, deployment_state=instance.deployment_state)
        if decision.kind == "stale":
            result.stale += 1
            continue
        if decision.only_touches:
            if decision.fields:
                touched.append(instance.pk)
            result.skipped += decision.kind == "skipped"
            result.synced += decision.kind == "synced"
            continue
        outcome = settle(instance.pk, observation)
        result.skipped += outcome.kind == "skipped"
        result.stale += outcome.kind == "stale"
        result.synced += outcome.kind == "synced"
        result.transitions += outcome.transitions
        result.adopted += outcome.adopted
        result.deleted += outcome.deleted
        result.stuck += outcome.stuck
        if outcome.transitions and outcome.deployment_id is not None:
            moved_deployments.add(outcome.deployment_id)
    _touch(touched, started_at, timezone.now())
    result.unmanaged = unmanaged_upsert(account, region, servers, seen_at=started_at)
    _announce_freshness({i.deployment_id for i in instances} - moved_deployments)


def _announce_freshness(deployment_ids: set[int]) -> None:
    """Watched deployments that did not change get a "sync" event, so their pages can say "synced just now"."""
    ids = watched(deployment_ids)
    if not ids:
        return
    for deployment in Deployment.objects.all_tenants().filter(pk__in=ids).order_by("pk"):
        deployment_event(deployment, "sync")


def unmanaged_upsert(account: CloudAccount, region: str, servers: list[Server], *,
                     seen_at: datetime.datetime) -> int:
    """List the servers Skyport does not track (not tagged as this installation's, or tagged but tracked by no
    instance) as UnmanagedServer rows; drop the rows of servers that are gone or tracked now. Returns how many are
    listed. Nothing is ever deleted at the provider."""
    ours = settings.SKYPORT_INSTALLATION_ID
    with transaction.atomic():
        live = _rows().filter(account_id=account.pk, region=region).exclude(state=S.DELETED)
        tracked = set(live.exclude(provider_server_id="").values_list("provider_server_id", flat=True))
        waiting = list(live.filter(provider_server_id="").values_list("pk", "operation_id"))
        # creates still in flight (or whose worker died before recording the id): theirs, not unmanaged
        in_flight_ops = {str(op) for _, op in waiting if op is not None}
        in_flight_ops |= {str(pk) for pk in Operation.objects.all_tenants().filter(
            account_id=account.pk, region=region, kind="create_server", state__in=LIVE_OPERATION_STATES,
        ).values_list("pk", flat=True)}
        waiting_instances = {str(pk) for pk, _ in waiting}
        untracked: dict[str, Server] = {}
        for server in servers:
            tags = server.tags or {}
            if server.id in tracked:
                continue
            if tags.get(TAG_INSTALLATION) == ours and (
                tags.get(TAG_OPERATION) in in_flight_ops or tags.get(TAG_INSTANCE) in waiting_instances
            ):
                continue
            untracked[server.id] = server
        rows = UnmanagedServer.objects.all_tenants().filter(account_id=account.pk, region=region)
        existing = {row.provider_server_id: row for row in rows.select_for_update(of=("self",))}
        new, changed = [], []
        for server_id, server in untracked.items():
            values = {
                "name": server.name[:255], "state": str(server.state)[:20], "size_id": server.size_id[:255],
                "private_ips": list(server.private_ips), "public_ips": list(server.public_ips),
            }
            row = existing.get(server_id)
            if row is None:
                new.append(UnmanagedServer(
                    organization_id=account.organization_id, account_id=account.pk, region=region,
                    provider_server_id=server_id, first_seen_at=seen_at, last_seen_at=seen_at, **values,
                ))
                continue
            for name, value in values.items():
                setattr(row, name, value)
            row.last_seen_at = seen_at
            changed.append(row)
        if new:
            UnmanagedServer.objects.all_tenants().bulk_create(new, ignore_conflicts=True)
        if changed:
            UnmanagedServer.objects.all_tenants().bulk_update(
                changed, ["name", "state", "size_id", "private_ips", "public_ips", "last_seen_at"], batch_size=500
            )
        gone = [pk for server_id, pk in ((sid, row.pk) for sid, row in existing.items()) if server_id not in untracked]
        if gone:
            UnmanagedServer.objects.all_tenants().filter(pk__in=gone).delete()
    return len(untracked)


def _next_interval(account_id: int, region: str) -> int:
    """Fast while anything there is moving or someone watches one of its deployments, slow otherwise."""
    live = _rows().filter(account_id=account_id, region=region).exclude(state=S.DELETED)
    if live.filter(state__in=TRANSITIONAL).exists():
        return fast_seconds()
    deployment_ids = set(live.values_list("deployment_id", flat=True))
    return fast_seconds() if watched(deployment_ids) else slow_seconds()


def _sweep_succeeded(state: SweepState, worker_id: str, account: CloudAccount, region: str,
                     result: SweepResult) -> SweepResult:
    now = timezone.now()
    result.next_sweep_at = now + datetime.timedelta(seconds=_next_interval(account.pk, region))
    _mine(state.pk, worker_id).update(
        lease_owner="", lease_expires_at=None, last_finished_at=now, next_sweep_at=result.next_sweep_at,
        failures=0, last_error="", servers_seen=result.servers_seen,
    )
    accounts = CloudAccount.objects.all_tenants().filter(pk=account.pk)
    accounts.update(last_success_at=now)
    # clear only what the sweep itself reported: a catalogue sync's complaint stands until a sync succeeds
    accounts.filter(health_message__startswith=HEALTH_PREFIX).update(health=Health.OK, health_message="")
    return result


def _sweep_failed(state: SweepState, worker_id: str, account: CloudAccount, region: str, result: SweepResult,
                  exc: CloudError) -> SweepResult:
    """Back off (the delay doubles with each consecutive failure, capped at the slow interval) and say so on the
    account: at once as failing for rejected credentials, as degraded after repeated failures of any other kind."""
    try:
        credentials = account.get_credentials()
    except Exception:
        credentials = {}
    message = scrub_secrets(exc.message, credentials)[:900]
    del credentials
    now = timezone.now()
    failures = (SweepState.objects.filter(pk=state.pk).values_list("failures", flat=True).first() or 0) + 1
    delay = min(slow_seconds(), fast_seconds() * 2 ** min(failures, 16))
    if isinstance(exc, TransientError) and exc.retry_after:
        delay = max(delay, min(int(exc.retry_after), slow_seconds()))
    result.ok, result.error = False, message
    result.next_sweep_at = now + datetime.timedelta(seconds=delay)
    _mine(state.pk, worker_id).update(
        lease_owner="", lease_expires_at=None, last_finished_at=now, next_sweep_at=result.next_sweep_at,
        failures=min(failures, 32767), last_error=message[:1000],
    )
    text = f"{HEALTH_PREFIX}{region} failed: {message}"[:500]
    accounts = CloudAccount.objects.all_tenants().filter(pk=account.pk)
    accounts.update(last_failure_at=now)
    if isinstance(exc, AuthError):
        accounts.update(health=Health.FAILING, health_message=text)
    elif failures >= DEGRADED_AFTER_FAILURES:
        accounts.exclude(health=Health.FAILING).update(health=Health.DEGRADED, health_message=text)
    log.warning("sweep of account %s region %s failed (%d in a row): %s", account.pk, region, failures, message)
    return result


def reconcile_due(*, worker_id: str | None = None, now: datetime.datetime | None = None, limit: int = 50,
                  look_up_elsewhere: Callable[[int, str], None] | None = None) -> int:
    """Sweep every account-region that is due, each under its own lease. Account-regions with live instances, and
    every region of an active account, get their SweepState (due at once) the first time they are seen. Returns how
    many were swept here."""
    if worker_id is None:
        from apps.clouds.operations_tasks import worker_id as make_worker_id

        worker_id = make_worker_id()
    now = now or timezone.now()
    places = set(_rows().exclude(state=S.DELETED).values_list("account_id", "region").distinct())
    # every region of every active account too, so servers Skyport did not create show up as unmanaged there
    for account in CloudAccount.objects.all_tenants().filter(is_active=True).only("pk", "regions",
                                                                                  "default_region"):
        places.update((account.pk, region) for region in account.all_regions)
    known = set(SweepState.objects.values_list("account_id", "region"))
    if places - known:
        SweepState.objects.bulk_create(
            [SweepState(account_id=a, region=r, next_sweep_at=now) for a, r in sorted(places - known)],
            ignore_conflicts=True,
        )
    due = (
        SweepState.objects.filter(Q(next_sweep_at__isnull=True) | Q(next_sweep_at__lte=now))
        .filter(Q(lease_owner="") | Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .select_related("account").order_by(F("next_sweep_at").asc(nulls_first=True), "pk")[:limit]
    )
    swept = 0
    for state in list(due):
        if sweep(state.account, state.region, worker_id=worker_id) is not None:
            swept += 1
    watched_look_ups(now=timezone.now(), look_up_elsewhere=look_up_elsewhere)
    return swept


# --- between sweeps: a closer look at what someone watches ---------------------------------------------------------


def watched_look_ups(*, now: datetime.datetime, look_up_elsewhere: Callable[[int, str], None] | None = None) -> int:
    """Between two sweeps of a fast account-region, look up the servers of its watched deployments (in one call where
    the provider allows it), every LOOK_UP_SECONDS. A sweep every few seconds alone leaves a watcher waiting up to a
    whole interval (plus the tick and the sweep itself) for a change made behind Skyport's back; the look-ups cut
    that wait without a second list call. With `look_up_elsewhere`, each account-region's pass is handed to it (a
    task of its own) instead of run here. Returns how many servers were asked here."""
    fast = fast_seconds()
    candidates = SweepState.objects.filter(
        lease_owner="", last_finished_at__isnull=False, last_finished_at__lte=now - LOOK_UP_CLEAR_AFTER_SWEEP,
        next_sweep_at__gt=now + LOOK_UP_CLEAR_BEFORE_SWEEP, failures=0,
    ).select_related("account")
    asked = 0
    for state in candidates:
        if state.next_sweep_at is None or state.last_finished_at is None:
            continue
        if (state.next_sweep_at - state.last_finished_at).total_seconds() > fast:
            continue  # a slow account-region: nobody watches it and nothing moves there
        # one pass per account-region every LOOK_UP_SECONDS, by one worker (an atomic add in the shared cache)
        if not cache.add(f"reconciler:looking:{state.pk}", 1, timeout=LOOK_UP_SECONDS):
            continue
        if look_up_elsewhere is not None:
            look_up_elsewhere(state.account_id, state.region)  # its own task: a slow sweep does not hold it up
        else:
            asked += _look_up_watched(state.account, state.region)
    return asked


def look_up_watched(account_id: int, region: str) -> int:
    """One look-up pass for an account-region (the task `watched_look_ups` hands it to on real workers)."""
    account = CloudAccount.objects.all_tenants().filter(pk=account_id).first()
    return _look_up_watched(account, region) if account is not None else 0


def _look_up_watched(account: CloudAccount, region: str) -> int:
    live = _rows().filter(account_id=account.pk, region=region).exclude(state=S.DELETED)
    ids = watched(set(live.values_list("deployment_id", flat=True)))
    if not ids or not account.is_active:
        return 0
    instances = list(
        live.filter(deployment_id__in=ids).exclude(provider_server_id="").select_related("operation")
        .annotate(deployment_state=F("deployment__state")).order_by("pk")[:WATCHED_LOOK_UPS]
    )
    try:
        driver = driver_for(account, region)
    except (CloudError, DecryptionError):
        return 0  # the next sweep reports it on the account
    now = timezone.now()
    instances = [i for i in instances if not operation_live(i.operation, now)]
    if not instances:
        return 0
    asked_at = timezone.now()
    try:
        # one call where the provider can look up several ids at once (EC2), else one per server
        servers = driver.get_servers([i.provider_server_id for i in instances])
    except CloudError as exc:
        log.info("look-up of watched instances in %s failed: %s", region, exc.message)
        return 0  # provider trouble: the sweep backs off and reports it
    for instance in instances:
        server = servers.get(instance.provider_server_id)
        if server is None:
            continue  # deletions are decided by the sweep (two misses, then a look-up)
        observation = Observation(Seen.SERVER, asked_at, server)
        decision = decide(instance, observation, now=timezone.now(), deployment_state=instance.deployment_state)
        if decision.kind != "stale" and not decision.only_touches:
            settle(instance.pk, observation)
    return len(instances)


# --- on demand -----------------------------------------------------------------------------------------------------


def _visible_deployment(actor: User, deployment_id: int) -> Deployment:
    deployment = Deployment.objects.for_user(actor, "deployments.view").filter(pk=deployment_id).first()
    if deployment is None:
        raise Http404("No such deployment.")
    return deployment


def _resync(instances: list[Instance]) -> tuple[list[Outcome], list[str]]:
    """One direct look-up per instance (the list is for sweeps), the same rules as a sweep. Returns the outcomes
    and the errors people can act on."""
    if in_transaction():
        raise ReconcilerInTransactionError("resync must be called with no database transaction open.")
    outcomes: list[Outcome] = []
    errors: list[str] = []
    drivers: dict[tuple[int, str], CloudDriver] = {}
    for instance in instances:
        if instance.state == S.DELETED:
            continue
        place = (instance.account_id, instance.region)
        asked_at = timezone.now()
        try:
            if place not in drivers:
                drivers[place] = driver_for(instance.account, instance.region)
            driver = drivers[place]
            if operation_live(instance.operation, asked_at):
                observation = Observation(Seen.NOTHING, asked_at)
            elif instance.provider_server_id:
                try:
                    observation = Observation(Seen.SERVER, asked_at, driver.get_server(instance.provider_server_id))
                except NotFoundError:
                    observation = Observation(Seen.GONE, asked_at)
            else:
                operation_id = _create_operation_id(instance)
                found = None
                if operation_id is not None:
                    tags = {TAG_INSTALLATION: settings.SKYPORT_INSTALLATION_ID, TAG_OPERATION: str(operation_id)}
                    found = _find_created(instance, driver.list_servers(tags=tags))
                observation = Observation(Seen.ADOPT if found else Seen.NOTHING, asked_at, found)
        except CloudError as exc:
            credentials = instance.account.get_credentials()
            errors.append(f"{instance.name}: {scrub_secrets(exc.message, credentials)}")
            continue
        except DecryptionError:
            errors.append(f"{instance.name}: the credentials of {instance.account.name} cannot be decrypted.")
            continue
        outcomes.append(settle(instance.pk, observation))
    for account_id, region in {(i.account_id, i.region) for i in instances}:
        state = sweep_state(account_id, region)
        SweepState.objects.filter(pk=state.pk).update(next_sweep_at=timezone.now())
    return outcomes, errors


def _states(instances: Iterable[Instance]) -> dict[str, str]:
    return {i.name: i.state for i in instances}


def instance_resync(*, actor: User, instance: Instance) -> Instance:
    """"Sync now" for one instance: a direct look-up at the provider, applied like a sweep's observation; the
    account-region's next sweep is brought forward to now. 404 for an instance the actor may not see."""
    deployment = _visible_deployment(actor, instance.deployment_id)
    fresh = _rows().select_related("account", "operation").filter(pk=instance.pk).first()
    if fresh is None:
        raise Http404("No such instance.")
    before = fresh.state
    _, errors = _resync([fresh])
    fresh = _rows().get(pk=fresh.pk)
    audit.record(actor=actor, verb="instance.resync", obj=fresh, before={"state": before},
                 after={"state": fresh.state}, extra={"deployment": deployment.pk})
    if errors:
        raise ServiceError("The provider could not be asked: " + "; ".join(errors))
    return fresh


def deployment_resync(*, actor: User, deployment: Deployment) -> Deployment:
    """"Sync now" for every instance of a deployment (one direct look-up each). 404 when the actor may not see it."""
    deployment = _visible_deployment(actor, deployment.pk)
    instances = list(_rows().filter(deployment_id=deployment.pk).exclude(state=S.DELETED)
                     .select_related("account", "operation").order_by("pk"))
    before = _states(instances)
    _, errors = _resync(instances)
    after = _states(_rows().filter(pk__in=[i.pk for i in instances]))
    deployment = Deployment.objects.all_tenants().get(pk=deployment.pk)
    audit.record(actor=actor, verb="deployment.resync", obj=deployment, before={"instances": before},
                 after={"instances": after})
    if errors:
        raise ServiceError("Some servers could not be synced: " + "; ".join(errors))
    return deployment


# --- the sysadmin's view -------------------------------------------------------------------------------------------


def instances_needing_attention(organization: Organization) -> QuerySet[Instance]:
    """Instances of the organisation that need a person: in error, stuck in a transitional state longer than
    SKYPORT_STUCK_SECONDS, or running without any address. Each row carries `attention` ("error", "stuck" or
    "no_address") and its deployment, project, account and owner: one query whatever the number of rows. The page
    that shows it checks who may see it."""
    cutoff = timezone.now() - datetime.timedelta(seconds=stuck_seconds())
    since = Coalesce("state_changed_at", "last_transition_at", "created_at")
    stuck = Q(state__in=TRANSITIONAL, since__lt=cutoff) & ~Q(deployment__state__in=DECIDED_WITHOUT_INSTANCES)
    no_address = Q(state=S.RUNNING, private_ips=[], public_ips=[])
    return (
        _rows().filter(organization_id=organization.pk)
        .annotate(since=since)
        .filter(Q(state=S.ERROR) | stuck | no_address)
        .annotate(attention=Case(
            When(state=S.ERROR, then=Value("error")),
            When(state=S.RUNNING, then=Value("no_address")),
            default=Value("stuck"),
            output_field=CharField(),
        ))
        .select_related("deployment", "project", "account", "owner")
        .order_by("attention", "since", "pk")
    )


# --- adopting a server ---------------------------------------------------------------------------------------------


def unmanaged_adopt(*, actor: User, server: UnmanagedServer, project: Project, name: str) -> Deployment:
    """Bring a server Skyport found but did not create under management: a deployment (no catalog item, placement
    {"adopted": true}) owned by the actor, with one instance in the state the provider shows now (running or
    stopped), sized from the account's synced flavor, held against the project's quotas (refused, with nothing
    changed, when it would exceed one). Org admins only (clouds.manage). The server itself is not touched; the
    UnmanagedServer row goes."""
    if not UnmanagedServer.objects.for_user(actor, "clouds.view").filter(pk=server.pk).exists():
        raise Http404("No such server.")
    require(actor, "clouds.manage", server)
    name = (name or "").strip()
    if not name or len(name) > 63:
        raise ServiceError({"name": "Give the deployment a name of 1 to 63 characters."})
    if project.organization_id != server.organization_id:
        raise ServiceError({"project": "This project belongs to another organisation."})
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived: nothing can be added to it."})
    account = CloudAccount.objects.all_tenants().get(pk=server.account_id)
    # what the provider shows now, not what the last sweep saw (asked with no transaction open)
    try:
        observed = driver_for(account, server.region).get_server(server.provider_server_id)
    except NotFoundError:
        raise ServiceError("This server no longer exists at the provider.") from None
    except CloudError as exc:
        raise ServiceError(f"{account.name} could not be asked about the server: "
                           f"{scrub_secrets(exc.message, account.get_credentials())}") from None
    state = PROVIDER_STATES.get(observed.state)
    if state not in (S.RUNNING, S.STOPPED):
        raise ServiceError(f"Adopt a server once it is running or stopped; it is {observed.state} now.")
    flavor = Flavor.objects.all_tenants().filter(
        account_id=account.pk, region=server.region, provider_id=observed.size_id
    ).first()
    if flavor is None:
        raise ServiceError(f"Size {observed.size_id!r} is not among the synced flavors of {account.name} in "
                           f"{server.region}: sync the account (Clouds → {account.name} → Sync now) and adopt again.")
    with transaction.atomic():
        row = UnmanagedServer.objects.all_tenants().select_for_update(of=("self",)).filter(pk=server.pk).first()
        if row is None:
            raise ServiceError("This server was adopted or has gone meanwhile.")
        tracked = _rows().filter(account_id=account.pk, region=server.region,
                                 provider_server_id=server.provider_server_id).exclude(state=S.DELETED)
        if tracked.exists():
            raise ServiceError("Skyport already tracks this server.")
        deployment = Deployment.objects.create(
            organization_id=server.organization_id, project=project, owner=actor, created_by=actor, name=name,
            catalog_item=None, blueprint_version=None, placement={"adopted": True},
            policy=Deployment.Policy.ACCOUNT, state=DeploymentState.PROVISIONING,
            estimated_hourly=flavor.price_per_hour,
        )
        # a server under management counts against the quotas like one launched here
        try:
            quota_reserve(project=project, user=actor, deployment=deployment,
                          demand=Demand(instances=1, vcpus=flavor.vcpus, ram_mb=flavor.ram_mb,
                                        disk_gb=flavor.disk_gb))
        except QuotaExceeded as exc:
            raise ServiceError({"project": f"{exc} Raise the quota, or adopt it into another project."}) from None
        instance = Instance.objects.create(
            organization_id=server.organization_id, project=project, deployment=deployment, owner=actor,
            name=f"{slugify(name)[:48] or 'server'}-server-1", role="server", index=1, account=account,
            region=server.region, provider_image_id=observed.image_id[:255], size=flavor.name[:60],
            flavor_id=flavor.provider_id, vcpus=flavor.vcpus, ram_mb=flavor.ram_mb, disk_gb=flavor.disk_gb,
            price_per_hour=flavor.price_per_hour, provider_server_id=observed.id,
            private_ips=list(observed.private_ips), public_ips=list(observed.public_ips),
            last_synced_at=timezone.now(),
        )
        # every instance starts pending; the state machine reaches running/stopped through building
        for move in moves_towards(S.PENDING, state):
            transition(instance, to=move.to, cause=Cause.PROVIDER, message="adopted")
        row.delete()
        deployment.refresh_from_db()
        audit.record(
            actor=actor, verb="unmanaged_server.adopt", obj=deployment,
            after={"server": observed.id, "account": account.name, "region": server.region, "state": state,
                   "size": flavor.name},
        )
    return deployment
