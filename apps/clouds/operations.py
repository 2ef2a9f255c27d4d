"""The Operation protocol: every mutating provider call goes through here.

1. `operation_start` commits the intent (an Operation row with an idempotency key; the same key answers with the
   existing row).
2. `operation_run` claims the lease with a conditional UPDATE (a second worker that finds a live lease does
   nothing), then runs each remaining step calling the driver with NO database transaction open, and commits each
   step's result with an UPDATE that checks it still holds the lease.
3. What a step creates is tagged at creation time with the installation id and the operation id; a retried create
   first looks for a server (or a public address) with those tags, so a worker killed after the provider created it,
   but before the result was committed, never leads to a second one.

Steps that wait for the provider (a server becoming running) do not block a worker: they park the operation as
pending with `next_attempt_at`, and the next run (the periodic `operations_resume`) continues at the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.clouds.drivers import driver_class, driver_for
from apps.clouds.drivers.base import (
    AuthError,
    CapacityError,
    CloudDriver,
    CloudError,
    CreateServer,
    ImagePending,
    ImageUpload,
    InvalidRequestError,
    NotFoundError,
    QuotaError,
    Server,
    ServerState,
    TransientError,
    scrub_secrets,
)
from apps.clouds.models import CloudAccount, Operation
from apps.core.crypto import DecryptionError

log = logging.getLogger(__name__)

TAG_INSTALLATION = "skyport:installation"
TAG_OPERATION = "skyport:operation"
LEASE_SECONDS = 300
# steps that move whole disk images (an S3 upload, a glance upload) run longer than any server call: their lease
# covers the largest upload, so another worker does not take the operation over while the first is still sending
LEASE_SECONDS_BY_KIND = {"push_image": 2 * 3600}
POLL_SECONDS = 5
WAIT_TIMEOUT_SECONDS = 30 * 60
# an EC2 snapshot import of a large disk waits on the provider for hours, not minutes
WAIT_TIMEOUT_SECONDS_BY_KIND = {"push_image": 12 * 3600}
BACKOFF_SECONDS = 10
BACKOFF_MAX_SECONDS = 600
WAIT_KEYS = ("waiting_since", "waiting_for")
# a step's answer under this key parks the operation for that many seconds after the step commits (not stored)
PARK_AFTER = "park_after_seconds"
# looked at a little after the provider's estimate, so that the first look finds the server ready
FIRST_LOOK_MARGIN_SECONDS = 0.25

ERROR_KINDS: dict[type[CloudError], str] = {
    AuthError: "auth",
    QuotaError: "quota",
    NotFoundError: "not_found",
    CapacityError: "capacity",
    TransientError: "transient",
    InvalidRequestError: "invalid_request",
}

# after each resize step, the states that mean the step is done (EC2: stop → resize → start; nova: resize →
# confirm_resize; the sim behaves like EC2)
RESIZE_STEP_DONE: dict[str, set[ServerState]] = {
    "stop": {ServerState.STOPPED},
    "resize": {ServerState.RUNNING, ServerState.STOPPED, ServerState.VERIFY_RESIZE},
    "confirm_resize": {ServerState.RUNNING, ServerState.STOPPED},
    "start": {ServerState.RUNNING},
}


def resize_step_call(driver: CloudDriver, step: str, server_id: str, size_id: str) -> None:
    """Make the provider call of one resize step (see `CloudDriver.resize_steps`)."""
    if step == "stop":
        driver.stop_server(server_id)
    elif step == "start":
        driver.start_server(server_id)
    elif step == "resize":
        driver.resize_server(server_id, size_id)
    elif step == "confirm_resize":
        driver.confirm_resize(server_id)
    else:
        raise ValueError(f"unknown resize step {step!r}")


class OperationInTransactionError(RuntimeError):
    """operation_run was called with a database transaction open: the provider call would be made inside it."""


class OperationFailed(Exception):
    """A step found that the operation cannot succeed (the server went into error, a wait timed out)."""


class NotReady(Exception):
    """The provider has not got there yet: run this step again in `delay` seconds."""

    def __init__(self, waiting_for: str, delay: float = POLL_SECONDS, progress: int | None = None) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for
        self.delay = delay
        self.progress = progress


@dataclass
class StepContext:
    operation: Operation
    driver: CloudDriver

    @property
    def params(self) -> dict[str, Any]:
        return self.operation.params

    @property
    def result(self) -> dict[str, Any]:
        return self.operation.result

    @property
    def server_id(self) -> str:
        return str(self.result.get("server_id") or self.params["server_id"])


def operation_tags(operation: Operation) -> dict[str, str]:
    return {TAG_INSTALLATION: settings.SKYPORT_INSTALLATION_ID, TAG_OPERATION: str(operation.pk)}


# --- steps ---------------------------------------------------------------------------------------------------------


def _step_create(ctx: StepContext) -> dict[str, Any]:
    op, params = ctx.operation, ctx.params
    ours = operation_tags(op)
    if op.attempt > 1:
        # an earlier attempt may have created the server and died before committing its id
        found = ctx.driver.list_servers(tags=ours)
        if found:
            return {"server_id": found[0].id}
    server = ctx.driver.create_server(
        CreateServer(
            name=params["name"],
            image_id=params["image_id"],
            size_id=params["size_id"],
            network_id=params.get("network_id"),
            public_key=params.get("public_key"),
            key_name=params.get("key_name"),
            firewall_id=ctx.result.get("firewall_id"),
            firewall_name=(params.get("firewall") or {}).get("name") if ctx.result.get("firewall_id") else None,
            user_data=params.get("user_data"),
            tags={**params.get("tags", {}), **ours},
            idempotency_token=f"skyport-{settings.SKYPORT_INSTALLATION_ID}-{op.pk}"[:64],
            want_public_ip=bool(params.get("want_public_ip", False)),
        )
    )
    return {"server_id": server.id, **_first_look(ctx.driver, server)}


def _first_look(driver: CloudDriver, server: Server) -> dict[str, Any]:
    """A server just created is not running yet: when the provider says how long it builds, the wait looks then
    instead of at once (a provider call and a park saved per launch). Drivers without an estimate look at once."""
    seconds = driver.expected_ready_seconds(server) if server.state != ServerState.RUNNING else None
    return {PARK_AFTER: float(seconds) + FIRST_LOOK_MARGIN_SECONDS} if seconds and seconds > 0 else {}


def _get_for_wait(ctx: StepContext, waiting_for: str) -> Server:
    try:
        return ctx.driver.get_server(ctx.server_id)
    except NotFoundError:
        # some providers (EC2) answer "not found" for a moment after the create
        raise NotReady(waiting_for) from None


def _wait_for(states: set[ServerState], label: str) -> Callable[[StepContext], dict[str, Any]]:
    def step(ctx: StepContext) -> dict[str, Any]:
        server = _get_for_wait(ctx, label)
        if server.state in states:
            return {
                "state": str(server.state),
                "size_id": server.size_id,
                "private_ips": list(server.private_ips),
                "public_ips": list(server.public_ips),
            }
        if server.state == ServerState.ERROR:
            raise OperationFailed(f"Server {server.id} went into error{': ' + server.fault if server.fault else ''}.")
        if server.state == ServerState.DELETED:
            raise OperationFailed(f"Server {server.id} was deleted meanwhile.")
        raise NotReady(f"{label} (server is {server.state})")

    return step


def _step_wait_deleted(ctx: StepContext) -> dict[str, Any]:
    try:
        server = ctx.driver.get_server(ctx.server_id)
    except NotFoundError:
        return {"state": str(ServerState.DELETED)}
    if server.state == ServerState.DELETED:
        return {"state": str(ServerState.DELETED)}
    if server.state == ServerState.ERROR and server.fault:
        raise OperationFailed(f"Deleting server {server.id} failed: {server.fault}.")
    raise NotReady(f"deleted (server is {server.state})")


def _step_allocate_ip(ctx: StepContext) -> dict[str, Any]:
    if ctx.result.get("public_ip_id"):
        return {}
    # the wait for running just described the server: its addresses are in the result, no second look-up
    if "public_ips" in ctx.result:
        public_ips = list(ctx.result["public_ips"])
    else:
        public_ips = list(ctx.driver.get_server(ctx.server_id).public_ips)
    if public_ips:  # the provider gave it one (EC2 default subnets): nothing to add
        return {"public_ip": public_ips[0]}
    ours = operation_tags(ctx.operation)
    if ctx.operation.attempt > 1:
        # an earlier attempt may have allocated the address and died before committing its id: the address carries
        # the operation's tags from its creation, so it is found instead of allocating a second one
        found = sorted(ctx.driver.list_public_ips(tags=ours), key=lambda ip: ip.id)
        if found:
            return {"public_ip_id": found[0].id, "public_ip": found[0].address}
    ip = ctx.driver.allocate_public_ip(tags=ours)
    return {"public_ip_id": ip.id, "public_ip": ip.address}


def _step_attach_ip(ctx: StepContext) -> dict[str, Any]:
    ip_id = ctx.result.get("public_ip_id")
    if ip_id:
        ctx.driver.attach_public_ip(str(ip_id), ctx.server_id)
    return {}


def _step_delete(ctx: StepContext) -> dict[str, Any]:
    with contextlib.suppress(NotFoundError):  # already gone: what we wanted
        ctx.driver.delete_server(ctx.server_id)
    return {}


def _created_by(ctx: StepContext) -> list[dict[str, str]]:
    """The tags of each create operation named in the params: what they made carries them from its creation."""
    ids = ctx.params.get("create_operation_ids") or [ctx.params["create_operation_id"]]
    return [{TAG_INSTALLATION: settings.SKYPORT_INSTALLATION_ID, TAG_OPERATION: str(i)} for i in ids]


def _tagged_servers(ctx: StepContext) -> list[Server]:
    found = [s for tags in _created_by(ctx) for s in ctx.driver.list_servers(tags=tags)]
    return [s for s in found if s.state != ServerState.DELETED]


def _step_delete_tagged(ctx: StepContext) -> dict[str, Any]:
    """Delete whatever the create operations made, found by their tags: used when a create's result never recorded
    a server id (it was cancelled, failed after the provider acted, or its worker died after the provider call)."""
    deleted = []
    for server in _tagged_servers(ctx):
        with contextlib.suppress(NotFoundError):
            ctx.driver.delete_server(server.id)
        deleted.append(server.id)
    return {"deleted_server_ids": deleted}


def _step_wait_tagged_deleted(ctx: StepContext) -> dict[str, Any]:
    left = _tagged_servers(ctx)
    if left:
        raise NotReady(f"deleted ({len(left)} server(s) still {left[0].state})")
    return {"state": str(ServerState.DELETED)}


def _step_release_tagged_ips(ctx: StepContext) -> dict[str, Any]:
    """Release every address the create operations allocated, committed or not."""
    released = []
    for tags in _created_by(ctx):
        for ip in ctx.driver.list_public_ips(tags=tags):
            with contextlib.suppress(NotFoundError):
                ctx.driver.release_public_ip(ip.id)
            released.append(ip.id)
    return {"released_ip_ids": released}


def _step_firewall(ctx: StepContext) -> dict[str, Any]:
    """Open the server's ports: the named firewall (security group), found again by its name on a retry."""
    spec = ctx.params["firewall"]
    tags = {**operation_tags(ctx.operation), **ctx.params.get("tags", {})}
    return {"firewall_id": ctx.driver.ensure_firewall(str(spec["name"]), list(spec.get("rules", [])), tags=tags)}


def _step_delete_firewall(ctx: StepContext) -> dict[str, Any]:
    ctx.driver.delete_firewall(str(ctx.params["firewall_name"]))
    return {}


def _step_delete_key_pair(ctx: StepContext) -> dict[str, Any]:
    ctx.driver.delete_key_pair(str(ctx.params["key_name"]))
    return {}


def _step_release_ip(ctx: StepContext) -> dict[str, Any]:
    with contextlib.suppress(NotFoundError):
        ctx.driver.release_public_ip(str(ctx.params["public_ip_id"]))
    return {}


def _step_delete_image(ctx: StepContext) -> dict[str, Any]:
    with contextlib.suppress(NotFoundError):  # already gone: what we wanted
        ctx.driver.delete_image(str(ctx.params["image_id"]))
    return {}


def _resize_call(step: str) -> Callable[[StepContext], dict[str, Any]]:
    def call(ctx: StepContext) -> dict[str, Any]:
        resize_step_call(ctx.driver, step, ctx.server_id, str(ctx.params["size_id"]))
        return {}

    return call


def _step_verify_size(ctx: StepContext) -> dict[str, Any]:
    server = ctx.driver.get_server(ctx.server_id)
    if server.size_id != ctx.params["size_id"]:
        raise OperationFailed(f"Server {server.id} reports size {server.size_id} after the resize.")
    return {"size_id": server.size_id}


def image_upload_for(operation: Operation) -> ImageUpload:
    """The upload an image push operation describes (params written by the catalog), tagged with its ids."""
    p = operation.params
    return ImageUpload(
        name=p["name"],
        path=p["path"],
        disk_format=p["disk_format"],
        arch=p.get("arch", "x86_64"),
        tags={**p.get("tags", {}), **operation_tags(operation)},
        description=p.get("description", ""),
        min_disk_gb=int(p.get("min_disk_gb", 0)),
        size_bytes=p.get("size_bytes"),
    )


# image steps that read the disk file (the others talk to the provider only)
IMAGE_FILE_STEPS = frozenset({"upload", "s3_upload"})


def _local_upload(operation: Operation, name: str) -> ImageUpload:
    """The upload, with its file on this worker: the app that started the push fetches it again when the operation
    resumes on another machine than the one that started it (settings.SKYPORT_OPERATION_FILE_SOURCES)."""
    upload = image_upload_for(operation)
    if name not in IMAGE_FILE_STEPS or os.path.isfile(upload.path):
        return upload
    source = getattr(settings, "SKYPORT_OPERATION_FILE_SOURCES", {}).get(operation.kind)
    if not source:
        return upload
    return dataclasses.replace(upload, path=str(import_string(source)(operation)))


def _image_step(name: str) -> Callable[[StepContext], dict[str, Any]]:
    def step(ctx: StepContext) -> dict[str, Any]:
        try:
            return ctx.driver.image_step(name, _local_upload(ctx.operation, name), dict(ctx.result))
        except ImagePending as pending:
            raise NotReady(pending.waiting_for, pending.delay, pending.progress) from None

    return step


STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "create": _step_create,
    "wait_running": _wait_for({ServerState.RUNNING}, "running"),
    "wait_stopped": _wait_for({ServerState.STOPPED}, "stopped"),
    "wait_deleted": _step_wait_deleted,
    "allocate_ip": _step_allocate_ip,
    "attach_ip": _step_attach_ip,
    "delete": _step_delete,
    "release_ip": _step_release_ip,
    "delete_tagged": _step_delete_tagged,
    "wait_tagged_deleted": _step_wait_tagged_deleted,
    "release_tagged_ips": _step_release_tagged_ips,
    "delete_key_pair": _step_delete_key_pair,
    "firewall": _step_firewall,
    "delete_firewall": _step_delete_firewall,
    "start": lambda ctx: ctx.driver.start_server(ctx.server_id) or {},
    "stop": lambda ctx: ctx.driver.stop_server(ctx.server_id) or {},
    "reboot": lambda ctx: ctx.driver.reboot_server(ctx.server_id, hard=bool(ctx.params.get("hard"))) or {},
    "verify_size": _step_verify_size,
    "delete_image": _step_delete_image,
}
for _name, _states in RESIZE_STEP_DONE.items():
    STEPS[f"resize:{_name}"] = _resize_call(_name)
    STEPS[f"resize:wait_{_name}"] = _wait_for(_states, f"{_name} done")

# image pushes: every step any driver declares in `image_steps`
IMAGE_STEP_NAMES = ("upload", "s3_upload", "import_snapshot", "wait_snapshot", "register_image", "wait_active")
for _name in IMAGE_STEP_NAMES:
    STEPS[f"image:{_name}"] = _image_step(_name)

KINDS = (
    "create_server",
    "delete_server",
    "start_server",
    "stop_server",
    "reboot_server",
    "resize_server",
    "push_image",
    "delete_image",
)


def operation_plan(kind: str, params: dict[str, Any], *, driver_kind: str) -> list[str]:
    """The steps of an operation of this kind, for this provider."""
    if kind == "create_server":
        return ((["firewall"] if params.get("firewall") else []) + ["create", "wait_running"]
                + (["allocate_ip", "attach_ip"] if params.get("want_public_ip") else []))
    if kind == "delete_server":
        # with a server id: delete it; without one (a create that never recorded it), what the create operation
        # made is found by its tags. Addresses it allocated are released by their tags too.
        created = params.get("create_operation_id") or params.get("create_operation_ids")
        steps = ["delete", "wait_deleted"] if params.get("server_id") else ["delete_tagged", "wait_tagged_deleted"]
        # a server id covers the create that recorded it; earlier failed attempts are found by their tags
        steps += ["delete_tagged", "wait_tagged_deleted"] if params.get("server_id") and created else []
        steps += ["delete_firewall"] if params.get("firewall_name") else []
        steps += ["release_ip"] if params.get("public_ip_id") else []
        steps += ["release_tagged_ips"] if created else []
        steps += ["delete_key_pair"] if params.get("delete_key_pair") and params.get("key_name") else []
        return steps
    if kind == "start_server":
        return ["start", "wait_running"]
    if kind == "stop_server":
        return ["stop", "wait_stopped"]
    if kind == "reboot_server":
        return ["reboot", "wait_running"]
    if kind == "delete_image":
        return ["delete_image"]
    if kind == "push_image":
        return [f"image:{step}" for step in driver_class(driver_kind).image_steps]
    if kind == "resize_server":
        plan: list[str] = []
        for step in driver_class(driver_kind).resize_steps:
            if params.get("keep_stopped") and step in ("stop", "start"):
                continue  # a stopped server is resized as it is and stays stopped
            plan += [f"resize:{step}", f"resize:wait_{step}"]
        return [*plan, "verify_size"]
    raise ValueError(f"unknown operation kind {kind!r}")


# --- the protocol --------------------------------------------------------------------------------------------------


def operation_start(
    *,
    account: CloudAccount,
    region: str | None,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str,
    steps: list[str] | None = None,
    actor: Any = None,
    project: Any = None,
    max_attempts: int = 5,
) -> Operation:
    """Commit the intent. The same idempotency key answers with the operation it started the first time."""
    same_key = Operation.objects.all_tenants().filter(
        organization_id=account.organization_id, idempotency_key=idempotency_key
    )
    # no ORDER BY: the key is unique in the organisation, and `first()` would sort by the model's -created_at,
    # which the planner may answer by walking the creation order of every operation
    existing = next(iter(same_key.order_by()[:1]), None)
    if existing is not None:
        return existing
    plan = steps if steps is not None else operation_plan(kind, params, driver_kind=account.kind)
    unknown = [s for s in plan if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown operation steps: {', '.join(unknown)}")
    try:
        with transaction.atomic():
            return Operation.objects.create(
                organization_id=account.organization_id,
                project=project,
                account=account,
                region=region or account.default_region,
                kind=kind,
                idempotency_key=idempotency_key,
                params=params,
                steps=plan,
                max_attempts=max_attempts,
                created_by=actor,
            )
    except IntegrityError:
        # a concurrent start with the same key won
        return same_key.get()


def in_transaction(using: str = DEFAULT_DB_ALIAS) -> bool:
    """True inside an atomic block. The blocks a test case wraps around each test do not count (Django's own check
    for durable blocks skips them the same way): they stand for the absence of a transaction in production."""
    conn = connections[using]
    return conn.in_atomic_block and not all(getattr(b, "_from_testcase", False) for b in conn.atomic_blocks)


def _rows() -> Any:
    # the protocol is system work on one known row; tenancy was checked when the operation was started
    return Operation.objects.all_tenants()


def operation_claim(operation_id: int, *, worker_id: str, lease_seconds: int = LEASE_SECONDS) -> bool:
    """Take the lease: a pending operation that is due, or a running one whose lease expired (its worker died)."""
    now = timezone.now()
    runnable = Q(state=Operation.State.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)) | Q(
        state=Operation.State.RUNNING, lease_expires_at__lt=now
    )
    claimed = (
        _rows()
        .filter(pk=operation_id)
        .filter(runnable)
        .update(
            state=Operation.State.RUNNING,
            lease_owner=worker_id,
            lease_expires_at=_lease_until(now, lease_seconds),
            attempt=F("attempt") + 1,
            updated_at=now,
        )
    )
    return claimed == 1


def _lease_until(now: datetime.datetime, lease_seconds: int) -> Any:
    """The end of the lease, longer for the kinds that need it (LEASE_SECONDS_BY_KIND), decided in the claim's own
    UPDATE so that a run does not read the operation's kind first."""
    default = Value(now + datetime.timedelta(seconds=lease_seconds))
    longer = [When(kind=kind, then=Value(now + datetime.timedelta(seconds=seconds)))
              for kind, seconds in LEASE_SECONDS_BY_KIND.items() if seconds > lease_seconds]
    return Case(*longer, default=default, output_field=DateTimeField()) if longer else default


def _mine(operation: Operation, worker_id: str) -> Any:
    return _rows().filter(pk=operation.pk, state=Operation.State.RUNNING, lease_owner=worker_id)


def _release(operation: Operation, worker_id: str, **fields: Any) -> bool:
    """Give the lease back with `fields` written (plain values: the row is ours while we hold the lease), and make
    the same change on `operation`, so that the run can answer with it instead of reading the row back."""
    fields.setdefault("lease_owner", "")
    fields.setdefault("lease_expires_at", None)
    fields["updated_at"] = timezone.now()
    if _mine(operation, worker_id).update(**fields) != 1:
        return False
    for name, value in fields.items():
        setattr(operation, name, value)
    return True


def _finish_failed(operation: Operation, worker_id: str, message: str, kind: str) -> None:
    step = operation.steps[operation.step] if operation.step < len(operation.steps) else "finish"
    log.warning("operation %s failed at step %s: %s", operation.pk, step, message)
    _release(
        operation,
        worker_id,
        state=Operation.State.FAILED,
        error=message[:1000],
        error_kind=kind,
        finished_at=timezone.now(),
        next_attempt_at=None,
    )


def _retry_or_fail(operation: Operation, worker_id: str, message: str, kind: str, retry_after: float | None) -> None:
    if operation.attempt >= operation.max_attempts:
        _finish_failed(operation, worker_id, f"Gave up after {operation.attempt} attempts: {message}", kind)
        return
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_SECONDS * 2 ** (operation.attempt - 1))
    delay = max(delay, retry_after or 0)
    log.info("operation %s will retry in %ss: %s", operation.pk, delay, message)
    _release(
        operation,
        worker_id,
        state=Operation.State.PENDING,
        error=message[:1000],
        error_kind=kind,
        next_attempt_at=timezone.now() + datetime.timedelta(seconds=delay),
    )


def operation_run(operation_id: int, *, worker_id: str, lease_seconds: int = LEASE_SECONDS) -> Operation | None:
    """Run what is left of the operation. None when another worker holds it (or it is not due / finished)."""
    if in_transaction():
        raise OperationInTransactionError(
            "operation_run must be called with no database transaction open: enqueue it with transaction.on_commit."
        )
    if not operation_claim(operation_id, worker_id=worker_id, lease_seconds=lease_seconds):
        return None
    operation = _rows().select_related("account").get(pk=operation_id)
    lease_seconds = max(lease_seconds, LEASE_SECONDS_BY_KIND.get(operation.kind, 0))
    if operation.attempt > operation.max_attempts:
        # claimed again after its workers died each time
        _finish_failed(operation, worker_id, f"Gave up after {operation.max_attempts} attempts.", "internal")
        return _rows().get(pk=operation_id)
    try:
        driver = driver_for(operation.account, operation.region or None)
    except CloudError as exc:
        _finish_failed(operation, worker_id, exc.message, ERROR_KINDS.get(type(exc), "internal"))
        return _rows().get(pk=operation_id)
    except DecryptionError as exc:  # a key was dropped too early: retrying cannot help
        _finish_failed(operation, worker_id, str(exc), "auth")
        return _rows().get(pk=operation_id)

    while operation.step < len(operation.steps):
        name = operation.steps[operation.step]
        ctx = StepContext(operation=operation, driver=driver)
        try:
            update = STEPS[name](ctx) or {}
        except NotReady as wait:
            return operation if _park(operation, worker_id, wait) else _rows().get(pk=operation_id)
        except OperationFailed as exc:
            _finish_failed(operation, worker_id, str(exc), "failed")
            return _rows().get(pk=operation_id)
        except CloudError as exc:
            kind = next((v for k, v in ERROR_KINDS.items() if isinstance(exc, k)), "internal")
            message = scrub_secrets(exc.message, driver.credentials)  # stored and shown: never a credential
            if exc.retryable:
                _retry_or_fail(operation, worker_id, message, kind, exc.retry_after)
            else:
                _finish_failed(operation, worker_id, message, kind)
            return _rows().get(pk=operation_id)
        except Exception as exc:
            log.exception("operation %s: step %s raised", operation.pk, name)
            message = f"Internal error in step {name} ({type(exc).__name__})."
            _retry_or_fail(operation, worker_id, message, "internal", None)
            return _rows().get(pk=operation_id)
        park_after = update.pop(PARK_AFTER, None)
        result = {k: v for k, v in {**operation.result, **update}.items() if k not in WAIT_KEYS}
        now = timezone.now()
        committed = _mine(operation, worker_id).update(
            step=operation.step + 1,
            result=result,
            lease_expires_at=now + datetime.timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        if not committed:
            log.warning("operation %s: lease lost at step %s, leaving it to its new owner", operation.pk, name)
            return None
        operation.step += 1
        operation.result = result
        if park_after and operation.step < len(operation.steps):
            waiting_for = f"{operation.steps[operation.step]} (looked at after the provider's estimate)"
            parked = _park(operation, worker_id, NotReady(waiting_for, delay=park_after))
            return operation if parked else _rows().get(pk=operation_id)

    done = _release(operation, worker_id, state=Operation.State.SUCCEEDED, finished_at=timezone.now(), error="",
                    error_kind="")
    return operation if done else _rows().get(pk=operation_id)


def _park(operation: Operation, worker_id: str, wait: NotReady) -> bool:
    """Waiting is not an attempt: give the attempt back, and fail only when the wait has lasted too long."""
    now = timezone.now()
    since_raw = operation.result.get("waiting_since")
    since = datetime.datetime.fromisoformat(since_raw) if since_raw else now
    timeout = WAIT_TIMEOUT_SECONDS_BY_KIND.get(operation.kind, WAIT_TIMEOUT_SECONDS)
    if (now - since).total_seconds() > timeout:
        minutes = timeout // 60
        _finish_failed(operation, worker_id, f"Waited more than {minutes} minutes for {wait.waiting_for}.", "timeout")
        return False
    return _release(
        operation,
        worker_id,
        state=Operation.State.PENDING,
        attempt=operation.attempt - 1,
        next_attempt_at=now + datetime.timedelta(seconds=wait.delay),
        result={
            **operation.result,
            "waiting_since": since.isoformat(),
            "waiting_for": wait.waiting_for,
            **({"progress": wait.progress} if wait.progress is not None else {}),
        },
    )


def operation_cancel(operation_id: int, message: str = "Cancelled.") -> bool:
    """Stop an operation no worker is running now (pending, or running with an expired lease): it fails with
    `message` and no worker takes it again. False when a worker holds it (it finishes its step; the caller follows
    up when it ends) or it already ended."""
    now = timezone.now()
    idle = Q(state=Operation.State.PENDING) | Q(state=Operation.State.RUNNING, lease_expires_at__lt=now)
    stopped = _rows().filter(pk=operation_id).filter(idle).update(
        state=Operation.State.FAILED, error=message[:1000], error_kind="cancelled", finished_at=now,
        next_attempt_at=None, lease_owner="", lease_expires_at=None, updated_at=now,
    )
    return stopped == 1


def operations_due(*, limit: int = 100) -> list[int]:
    """Ids of operations a worker should run now: pending and due, or running with an expired lease."""
    now = timezone.now()
    due = Q(state=Operation.State.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)) | Q(
        state=Operation.State.RUNNING, lease_expires_at__lt=now
    )
    return list(_rows().filter(due).order_by("pk").values_list("pk", flat=True)[:limit])
