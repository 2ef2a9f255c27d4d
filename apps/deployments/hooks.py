"""Before- and after-launch hooks: HTTP endpoints an organisation's admins register to approve launches and to be
told about them.

- A before-launch hook is called by the launch task, with no database transaction open, in name order. Its answer
  decides; a hook that fails (no answer, an error status, an unreadable answer) denies the launch unless it is set to
  let launches through when it fails. The first veto or denying failure is the verdict.
- An after-launch hook gets one HookDelivery row per event, sent by a Celery task once the caller's transaction has
  committed and retried with backoff. It never blocks or fails a launch.

Every request is a POST of a JSON body signed with the hook's secret (`hook_sign`). Outbound safety: the URL is
checked when saved and again at every send; the connection goes to the very address that was checked (a name cannot
resolve to a public address for the check and to an inward one for the connection); link-local addresses (cloud
metadata services) are refused even when an operator allowed their network; redirects are never followed. The
secret is stored encrypted and appears in no payload, log line, audit row or error.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.clouds.operations import in_transaction
from apps.core import audit, crypto
from apps.core.netsafety import UnsafeURLError, check_address, check_url, resolve
from apps.core.permissions import ServiceError, require
from apps.deployments.models import Deployment, Hook, HookDelivery, Instance

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
REPLAY_WINDOW_SECONDS = 300
TIMEOUT_MIN_SECONDS, TIMEOUT_MAX_SECONDS = 1, 30
SECRET_MIN_LENGTH, SECRET_MAX_LENGTH = 16, 256
MAX_ATTEMPTS = 5
RETRY_FIRST_SECONDS, RETRY_FACTOR = 30, 4  # 30 s, 2 min, 8 min, 32 min
# a claimed delivery is not due again before this: longer than any call, short enough to recover a dead worker
CLAIM_SECONDS = TIMEOUT_MAX_SECONDS + 90
MAX_ANSWER_BYTES = 64 * 1024
VETO_MESSAGE_LENGTH = 500
BEFORE_EVENT = "before_launch"
AFTER_EVENTS = ("instance.running", "deployment.deleted")
TEST_EVENT = "test"
HOOK_FIELDS = ("name", "url", "phase", "timeout_seconds", "allow_on_failure", "is_enabled")
UPDATABLE = frozenset({*HOOK_FIELDS, "secret"})
USER_AGENT = "Skyport-Hooks/1"


@dataclass(frozen=True)
class HookVerdict:
    """What the before-launch hooks decided: `message` is shown to the person who launched (empty when allowed),
    `hook` names the hook that decided (empty when no hook objected)."""

    allowed: bool
    message: str = ""
    hook: str = ""


class HookInTransactionError(RuntimeError):
    """A hook call was made inside a database transaction: a slow receiver would hold it (and its locks)."""


# --- signing -------------------------------------------------------------------------------------------------------
def hook_sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256(secret, "<timestamp>." + body): the timestamp is signed with the body, so a captured
    request cannot be replayed later with a fresh timestamp."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def hook_verify(
    secret: str,
    timestamp: int | str,
    body: bytes | str,
    signature: str,
    *,
    tolerance: int = REPLAY_WINDOW_SECONDS,
    now: float | datetime.datetime | None = None,
) -> bool:
    """True when `signature` is this body's signature and the timestamp lies within `tolerance` seconds of now.
    The timestamp is checked as sent (digits only), the comparison takes constant time."""
    text = str(timestamp).strip()
    if not re.fullmatch(r"[0-9]{1,12}", text):
        return False
    if now is None:
        now = time.time()
    current = int(now.timestamp() if isinstance(now, datetime.datetime) else now)
    if abs(current - int(text)) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = hook_sign(secret, text, raw).encode()
    return hmac.compare_digest(expected, str(signature).strip().encode())


# --- outbound safety -----------------------------------------------------------------------------------------------
def _refuse_metadata(address: str) -> None:
    """Link-local addresses (169.254.169.254, fe80::/10) and the IPv6 EC2 metadata address are never called, whatever
    SKYPORT_ALLOWED_PRIVATE_NETWORKS says: a hook is configured by a tenant, not by the operator."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254"):
        raise UnsafeURLError(f"{ip} is a link-local address (cloud metadata services live there): hooks never "
                             "call it.")


def _check_addresses(host: str, port: int) -> list[str]:
    """Every address the host resolves to now, each allowed; the caller connects to these and nothing else."""
    addresses = resolve(host, port)
    for address in addresses:
        _refuse_metadata(address)
        check_address(address)
    return addresses


def hook_check_url(url: str) -> str:
    """The outbound rules for a hook URL (scheme, no credentials, every resolved address allowed)."""
    check_url(url)
    parts = urlsplit(url.strip())
    _check_addresses(parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80))
    return url


class _DeadlineSocket:
    """The socket of one call, every wait bounded by what is left of the hook's timeout: a receiver that trickles
    its answer byte by byte cannot hold a worker longer than the timeout."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline
        # like socket.makefile: http.client closes the connection before the answer is read, the reader keeps it
        self._users = 1

    def arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self.arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any) -> int:
        self.arm()
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._users += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.close()
        super().close()


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificates and host names verified; loading the CAs once is enough


class _CheckedConnection(http.client.HTTPConnection):
    """Connects to an address the host resolves to at this moment, each checked first (no DNS rebinding between
    the check and the connection); TLS verifies the certificate against the host name."""

    def __init__(self, host: str, port: int, *, deadline: float, tls: bool) -> None:
        super().__init__(host, port)
        self._deadline, self._tls = deadline, tls
        self.default_port = 443 if tls else 80  # the Host header names the port only when it is not the default

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def connect(self) -> None:
        addresses = _check_addresses(self.host, self.port)
        last: OSError | None = None
        sock: socket.socket | None = None
        for address in addresses:
            try:
                sock = socket.create_connection((address, self.port), self._left())
                break
            except TimeoutError:
                raise
            except OSError as exc:
                last = exc
        if sock is None:
            raise last or OSError(f"{self.host} has no address")
        if self._tls:
            try:
                sock.settimeout(self._left())  # the handshake as a whole is bounded by it
                sock = _tls_context().wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = _DeadlineSocket(sock, self._deadline)


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    body: bytes


class _CallError(Exception):
    """The call could not be made or got no answer; `unsafe` when the outbound rules refused it (nothing was sent)."""

    def __init__(self, message: str, *, unsafe: bool = False) -> None:
        super().__init__(message)
        self.message, self.unsafe = message, unsafe


def _post(url: str, body: bytes, headers: dict[str, str], timeout: int) -> _Answer:
    try:
        parts = urlsplit(url.strip())
        tls = parts.scheme.lower() == "https"
        host, port = parts.hostname or "", parts.port or (443 if tls else 80)
    except ValueError:
        raise _CallError("the URL is malformed", unsafe=True) from None
    try:
        resolve(host, port)
    except UnsafeURLError:  # a DNS hiccup is worth a retry, unlike a refused address
        raise _CallError(f"the host name {host!r} cannot be resolved") from None
    try:
        check_url(url)
    except UnsafeURLError as exc:
        raise _CallError(f"refused by the outbound rules: {exc}", unsafe=True) from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _CheckedConnection(host, port, deadline=time.monotonic() + timeout, tls=tls)
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_ANSWER_BYTES)
        return _Answer(response.status, response.reason or "", data)
    except UnsafeURLError as exc:
        raise _CallError(f"refused by the outbound rules: {exc}", unsafe=True) from None
    except TimeoutError:
        raise _CallError(f"no answer within {timeout} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise _CallError(f"the TLS certificate was refused ({exc.verify_message})") from None
    except ssl.SSLError as exc:
        raise _CallError(f"the TLS connection failed ({exc.reason or type(exc).__name__})") from None
    except ConnectionRefusedError:
        raise _CallError("the connection was refused") from None
    except (OSError, http.client.HTTPException) as exc:
        log.debug("hook call failed", exc_info=True)
        raise _CallError(f"the connection failed ({type(exc).__name__})") from None
    finally:
        conn.close()


# --- one call ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Outcome:
    answer: _Answer | None
    problem: str  # why it counts as a failure; empty for a 2xx answer
    unsafe: bool
    duration_ms: int


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _new_delivery_id() -> str:
    return f"dlv_{uuid.uuid4().hex}"


def _call(hook: Hook, *, event: str, payload: dict[str, Any], delivery_id: str) -> _Outcome:
    """Send one signed request; never raises. A non-2xx answer is a problem (redirects are not followed)."""
    started = time.monotonic()

    def outcome(answer: _Answer | None, problem: str, unsafe: bool = False) -> _Outcome:
        return _Outcome(answer, problem, unsafe, int((time.monotonic() - started) * 1000))

    try:
        secret = crypto.decrypt(hook.secret_encrypted)
    except crypto.DecryptionError:
        return outcome(None, "its secret cannot be decrypted with the configured SKYPORT_FERNET_KEYS")
    body = _encode(payload)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Skyport-Event": event,
        "X-Skyport-Delivery": delivery_id,
        "X-Skyport-Timestamp": str(timestamp),
        "X-Skyport-Signature": hook_sign(secret, timestamp, body),
    }
    del secret
    try:
        answer = _post(hook.url, body, headers, hook.timeout_seconds)
    except _CallError as exc:
        return outcome(None, exc.message, exc.unsafe)
    except Exception as exc:  # a bug here must not fail a launch or lose the delivery's log
        log.exception("hook %s: sending %s failed unexpectedly", hook.pk, delivery_id)
        return outcome(None, f"internal error ({type(exc).__name__})")
    if 200 <= answer.status < 300:
        return outcome(answer, "")
    if 300 <= answer.status < 400:
        return outcome(answer, f"HTTP {answer.status} (redirects are not followed)")
    return outcome(answer, f"HTTP {answer.status} {answer.reason}".strip())


def _read_verdict(answer: _Answer) -> tuple[bool | None, str]:
    """(allow, message) from a before-launch answer, or (None, why it cannot be read)."""
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        return None, "the answer is not valid JSON"
    if not isinstance(data, dict) or not isinstance(data.get("allow"), bool):
        return None, 'the answer has no "allow": true or false'
    message = data.get("message")
    text = " ".join(message.split()) if isinstance(message, str) else ""
    return data["allow"], text[:VETO_MESSAGE_LENGTH]


def _verdict_of(outcome: _Outcome) -> tuple[bool | None, str]:
    if outcome.problem or outcome.answer is None:
        return None, outcome.problem
    return _read_verdict(outcome.answer)


def _record(
    hook: Hook,
    *,
    event: str,
    delivery_id: str,
    payload: dict[str, Any],
    outcome: _Outcome,
    state: str,
    message: str,
    deployment: Deployment | None = None,
) -> HookDelivery:
    return HookDelivery.objects.create(
        organization_id=hook.organization_id, hook=hook, deployment=deployment, event=event,
        delivery_id=delivery_id, payload=payload, state=state, attempts=1,
        status_code=outcome.answer.status if outcome.answer else None, message=message[:1000],
        duration_ms=outcome.duration_ms, finished_at=timezone.now(),
    )


# --- payloads ------------------------------------------------------------------------------------------------------
def _parameters(parameters: Any) -> Any:
    """The launch parameters, with any whose name looks like a secret replaced (a receiver needs no password)."""
    if not isinstance(parameters, dict):
        return parameters
    return {k: (audit.REDACTED if audit.is_secret_field(str(k)) else v) for k, v in parameters.items()}


def _instance_summary(instance: Instance) -> dict[str, Any]:
    return {
        "name": instance.name,
        "role": instance.role,
        "account": instance.account.name,
        "region": instance.region,
        "size": instance.size,
        "vcpus": instance.vcpus,
        "ram_mb": instance.ram_mb,
        "disk_gb": instance.disk_gb,
        "image": str(instance.image) if instance.image is not None else instance.provider_image_id,
    }


def hook_payload(deployment: Deployment, *, event: str, instance: Instance | None = None) -> dict[str, Any]:
    """What a hook is told: the deployment and its servers as planned. No secrets, no user data scripts, no keys."""
    deployment = (
        Deployment.objects.all_tenants().select_related("project", "owner", "catalog_item").get(pk=deployment.pk)
    )
    item = deployment.catalog_item
    instances = deployment.instances.select_related("account", "image").order_by("role", "index", "pk")
    payload: dict[str, Any] = {
        "event": event,
        "deployment": {
            "id": deployment.pk,
            "name": deployment.name,
            "project": {"id": deployment.project.pk, "slug": deployment.project.slug, "name": deployment.project.name},
            "owner": {"id": deployment.owner.pk, "username": deployment.owner.username},
            "catalog_item": {"id": item.pk, "slug": item.slug} if item is not None else None,
            "parameters": _parameters(deployment.parameters),
            "policy": deployment.policy,
            "estimated_hourly": str(deployment.estimated_hourly) if deployment.estimated_hourly is not None else None,
        },
        "instances": [_instance_summary(i) for i in instances],
    }
    if instance is not None:
        payload["instance"] = {
            "name": instance.name,
            "role": instance.role,
            "state": instance.state,
            "private_ips": list(instance.private_ips or []),
            "public_ips": list(instance.public_ips or []),
        }
    return payload


# --- before launch -------------------------------------------------------------------------------------------------
def _hooks_of(organization_id: int, phase: str) -> list[Hook]:
    # system work on one organisation's rows: the launch was authorised when it was requested
    return list(
        Hook.objects.all_tenants()
        .filter(organization_id=organization_id, phase=phase, is_enabled=True)
        .order_by("name", "pk")
    )


def hooks_before_launch(deployment: Deployment) -> HookVerdict:
    """Ask every enabled before-launch hook of the organisation, in name order; the first veto or denying failure
    is the verdict. Each call is logged as a HookDelivery. Must run with no transaction open (it waits on HTTP)."""
    if in_transaction():
        raise HookInTransactionError(
            "hooks_before_launch waits on HTTP calls: call it from a task with no database transaction open."
        )
    hooks = _hooks_of(deployment.organization_id, Hook.Phase.BEFORE)
    if not hooks:
        return HookVerdict(True)
    payload = hook_payload(deployment, event=BEFORE_EVENT)
    for hook in hooks:
        delivery_id = _new_delivery_id()
        outcome = _call(hook, event=BEFORE_EVENT, payload=payload, delivery_id=delivery_id)
        allow, text = _verdict_of(outcome)
        if allow is True:
            _record(hook, event=BEFORE_EVENT, delivery_id=delivery_id, payload=payload, outcome=outcome,
                    state=HookDelivery.State.DELIVERED, message=text, deployment=deployment)
            log.info("hook %s allowed deployment %s (%s)", hook.pk, deployment.pk, delivery_id)
            continue
        if allow is False:
            message = text or f"The launch policy hook {hook.name} refused this launch."
            _record(hook, event=BEFORE_EVENT, delivery_id=delivery_id, payload=payload, outcome=outcome,
                    state=HookDelivery.State.VETOED, message=message, deployment=deployment)
            log.info("hook %s vetoed deployment %s (%s)", hook.pk, deployment.pk, delivery_id)
            return HookVerdict(False, message, hook.name)
        # a failure: deny, unless this hook lets launches through when it fails
        note = f"{text} (let through: the hook allows launches when it fails)" if hook.allow_on_failure else text
        _record(hook, event=BEFORE_EVENT, delivery_id=delivery_id, payload=payload, outcome=outcome,
                state=HookDelivery.State.FAILED, message=note, deployment=deployment)
        log.warning("hook %s failed for deployment %s (%s): %s", hook.pk, deployment.pk, delivery_id, note)
        if not hook.allow_on_failure:
            return HookVerdict(False, f"Launch policy hook {hook.name} did not answer: {text}"[:1000], hook.name)
    return HookVerdict(True)


# --- after launch --------------------------------------------------------------------------------------------------
def _deliveries() -> Any:
    # deliveries are system work on known rows; who may see them is the pages' and the API's business
    return HookDelivery.objects.all_tenants()


def _enqueue(delivery_pk: int) -> None:
    """Hand one delivery to a worker. A broker that refuses it loses nothing: the periodic resume sends it."""
    from apps.deployments.hook_tasks import hook_delivery_send

    try:
        hook_delivery_send.delay(delivery_pk)
    except Exception:
        log.exception("hook delivery %s could not be queued; the periodic resume will send it", delivery_pk)


def hooks_after_launch(deployment: Deployment, event: str, instance: Instance | None = None) -> list[HookDelivery]:
    """Queue one delivery per enabled after-launch hook, sent once the caller's transaction commits. Never raises
    for a hook's sake: a launch or a delete goes on whatever the hooks do. `event` is instance.running (with the
    instance) or deployment.deleted."""
    if event not in AFTER_EVENTS:
        raise ValueError(f"unknown after-launch event {event!r}: one of {', '.join(AFTER_EVENTS)}")
    try:
        with transaction.atomic():  # a savepoint: a failure here leaves the caller's transaction usable
            hooks = _hooks_of(deployment.organization_id, Hook.Phase.AFTER)
            if not hooks:
                return []
            payload = hook_payload(deployment, event=event, instance=instance)
            deliveries = [
                HookDelivery.objects.create(
                    organization_id=hook.organization_id, hook=hook, deployment_id=deployment.pk, event=event,
                    delivery_id=_new_delivery_id(), payload=payload, state=HookDelivery.State.PENDING,
                )
                for hook in hooks
            ]
    except Exception:
        log.exception("after-launch hooks of deployment %s could not be queued (%s)", deployment.pk, event)
        return []
    for delivery in deliveries:
        transaction.on_commit(functools.partial(_enqueue, delivery.pk))
    return deliveries


def hook_retry_delay(attempt: int) -> datetime.timedelta:
    """How long to wait after failed attempt number `attempt` (1-based): 30 s, 2 min, 8 min, 32 min."""
    return datetime.timedelta(seconds=RETRY_FIRST_SECONDS * RETRY_FACTOR ** (attempt - 1))


def _due(now: datetime.datetime) -> Q:
    return Q(state=HookDelivery.State.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))


def hook_delivery_attempt(delivery_pk: int) -> HookDelivery | None:
    """Send one pending after-launch delivery if it is due. The row is claimed by a conditional UPDATE (which also
    counts the attempt and pushes it out of reach for a while), so two workers never send it at once and a worker
    that dies leaves it due again. None when it was not ours to send."""
    if in_transaction():
        raise HookInTransactionError(
            "hook_delivery_attempt waits on an HTTP call: run it from a task with no database transaction open."
        )
    now = timezone.now()
    claimed = (
        _deliveries()
        .filter(pk=delivery_pk, event__in=AFTER_EVENTS)
        .filter(_due(now))
        .update(attempts=F("attempts") + 1, next_attempt_at=now + datetime.timedelta(seconds=CLAIM_SECONDS))
    )
    if not claimed:
        return None
    delivery = _deliveries().select_related("hook").get(pk=delivery_pk)
    hook = delivery.hook
    mine = _deliveries().filter(pk=delivery_pk, state=HookDelivery.State.PENDING, attempts=delivery.attempts)

    def finish(state: str, message: str, outcome: _Outcome | None = None, retry_at: Any = None) -> HookDelivery:
        fields: dict[str, Any] = {"state": state, "message": message[:1000], "next_attempt_at": retry_at}
        if outcome is not None:
            fields["status_code"] = outcome.answer.status if outcome.answer else None
            fields["duration_ms"] = outcome.duration_ms
        if state != HookDelivery.State.PENDING:
            fields["finished_at"] = timezone.now()
        if not mine.update(**fields):
            log.warning("hook delivery %s was claimed again meanwhile; its new owner records it", delivery_pk)
        return _deliveries().get(pk=delivery_pk)

    if not hook.is_enabled:
        return finish(HookDelivery.State.FAILED, "The hook was disabled before this delivery was sent.")
    if delivery.attempts > MAX_ATTEMPTS:  # claimed again after its workers died each time
        return finish(HookDelivery.State.FAILED, f"Gave up after {MAX_ATTEMPTS} attempts.")
    outcome = _call(hook, event=delivery.event, payload=delivery.payload, delivery_id=delivery.delivery_id)
    if not outcome.problem:
        log.info("hook %s: delivery %s delivered", hook.pk, delivery.delivery_id)
        return finish(HookDelivery.State.DELIVERED, "", outcome)
    if outcome.unsafe:  # the rules refused it: nothing was sent, and waiting does not make it safe
        log.warning("hook %s: delivery %s refused: %s", hook.pk, delivery.delivery_id, outcome.problem)
        return finish(HookDelivery.State.FAILED, outcome.problem, outcome)
    if delivery.attempts >= MAX_ATTEMPTS:
        log.warning("hook %s: delivery %s failed for good: %s", hook.pk, delivery.delivery_id, outcome.problem)
        return finish(HookDelivery.State.FAILED, f"Gave up after {delivery.attempts} attempts: {outcome.problem}",
                      outcome)
    retry_at = timezone.now() + hook_retry_delay(delivery.attempts)
    log.info("hook %s: delivery %s failed (%s), retry at %s", hook.pk, delivery.delivery_id, outcome.problem,
             retry_at.isoformat())
    return finish(HookDelivery.State.PENDING, outcome.problem, outcome, retry_at)


def hook_deliveries_due(*, limit: int = 100) -> list[int]:
    """Ids of after-launch deliveries to send now: pending and due (never sent, retry time reached, or left by a
    worker that died)."""
    now = timezone.now()
    rows = _deliveries().filter(_due(now), event__in=AFTER_EVENTS).order_by("pk")
    return list(rows.values_list("pk", flat=True)[:limit])


# --- services ------------------------------------------------------------------------------------------------------
def _clean_name(value: Any) -> str:
    name = str(value or "").strip()
    if not name:
        raise ServiceError({"name": "Give the hook a name."})
    if len(name) > 100:
        raise ServiceError({"name": "The name takes at most 100 characters."})
    return name


def _clean_url(value: Any) -> str:
    url = str(value or "").strip()
    if not url:
        raise ServiceError({"url": "Give the URL the hook calls (https://…)."})
    if len(url) > 500:
        raise ServiceError({"url": "The URL takes at most 500 characters."})
    try:
        hook_check_url(url)
    except UnsafeURLError as exc:
        raise ServiceError({"url": str(exc)}) from None
    return url


def _clean_phase(value: Any) -> str:
    if value not in Hook.Phase.values:
        raise ServiceError({"phase": f"The phase is one of {', '.join(Hook.Phase.values)}."})
    return str(value)


def _clean_secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < SECRET_MIN_LENGTH:
        raise ServiceError({"secret": f"The secret needs at least {SECRET_MIN_LENGTH} characters; use a random one "
                                      "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')."})
    if len(value) > SECRET_MAX_LENGTH:
        raise ServiceError({"secret": f"The secret takes at most {SECRET_MAX_LENGTH} characters."})
    return value


def _clean_timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ServiceError({"timeout_seconds": "The timeout is a whole number of seconds."})
    try:
        seconds = int(value)
    except ValueError:
        raise ServiceError({"timeout_seconds": "The timeout is a whole number of seconds."}) from None
    if not TIMEOUT_MIN_SECONDS <= seconds <= TIMEOUT_MAX_SECONDS:
        raise ServiceError({"timeout_seconds": f"The timeout is {TIMEOUT_MIN_SECONDS} to {TIMEOUT_MAX_SECONDS} "
                                               "seconds."})
    return seconds


def _clean_flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ServiceError({field: "Yes or no (true or false)."})
    return value


def _check_name_free(organization_id: int, name: str, exclude_pk: int | None = None) -> None:
    clash = Hook.objects.all_tenants().filter(organization_id=organization_id, name__iexact=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ServiceError({"name": "This organisation already has a hook with this name."})


def _fingerprint(hook: Hook) -> str:
    try:
        return crypto.fingerprint(crypto.decrypt(hook.secret_encrypted))
    except crypto.DecryptionError:
        return ""


def _set_secret(hook: Hook, secret: str) -> None:
    hook.secret_encrypted = crypto.encrypt(secret)
    hook.secret_last4 = secret[-4:]


def _audit_state(hook: Hook) -> dict[str, Any]:
    # the fingerprint tells a rotation apart without the secret; secret_last4 is redacted by the audit writer
    return {**audit.snapshot(hook, HOOK_FIELDS), "secret_last4": hook.secret_last4, "fingerprint": _fingerprint(hook)}


def _raise_collected(errors: dict[str, list[str]]) -> None:
    if errors:
        raise ServiceError(errors)


def _collect(errors: dict[str, list[str]], clean: Any, *args: Any) -> Any:
    """Run one field's check, keep its error with the others: a form shows every problem at once."""
    try:
        return clean(*args)
    except ServiceError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
        return None


def hook_create(
    *,
    actor: User,
    organization: Organization,
    name: str,
    url: str,
    phase: str,
    secret: str,
    timeout_seconds: int = 5,
    allow_on_failure: bool = False,
    is_enabled: bool = True,
) -> Hook:
    """Register a hook. Everything is checked (the URL against the outbound rules) before anything is written."""
    require(actor, "hooks.manage", organization)
    errors: dict[str, list[str]] = {}
    clean_name = _collect(errors, _clean_name, name)
    clean_url = _collect(errors, _clean_url, url)
    clean_phase = _collect(errors, _clean_phase, phase)
    clean_secret = _collect(errors, _clean_secret, secret)
    clean_timeout = _collect(errors, _clean_timeout, timeout_seconds)
    clean_allow = _collect(errors, _clean_flag, "allow_on_failure", allow_on_failure)
    clean_enabled = _collect(errors, _clean_flag, "is_enabled", is_enabled)
    if clean_name is not None:
        _collect(errors, _check_name_free, organization.pk, clean_name)
    _raise_collected(errors)
    hook = Hook(
        organization=organization, name=clean_name, url=clean_url, phase=clean_phase, timeout_seconds=clean_timeout,
        allow_on_failure=clean_allow, is_enabled=clean_enabled, created_by=actor,
    )
    _set_secret(hook, clean_secret)
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: a concurrent create with the same name loses cleanly
                hook.save()
        except IntegrityError:
            raise ServiceError({"name": "A hook with this name was just created: choose another name."}) from None
        audit.record(actor=actor, verb="hook.create", obj=hook, after=_audit_state(hook))
    return hook


def hook_update(*, actor: User, hook: Hook, **fields: Any) -> Hook:
    """Change a hook. A `secret` rotates it (omitted or empty keeps the current one); other fields left out (or None)
    keep their value. Everything is checked before anything is written."""
    require(actor, "hooks.manage", hook)
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise TypeError(f"hook_update() got unexpected fields: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in fields.items() if v is not None and not (k == "secret" and v == "")}
    errors: dict[str, list[str]] = {}
    cleaners: dict[str, Any] = {
        "name": _clean_name, "url": _clean_url, "phase": _clean_phase, "secret": _clean_secret,
        "timeout_seconds": _clean_timeout,
        "allow_on_failure": functools.partial(_clean_flag, "allow_on_failure"),
        "is_enabled": functools.partial(_clean_flag, "is_enabled"),
    }
    clean = {k: _collect(errors, cleaners[k], v) for k, v in given.items()}
    if clean.get("name") is not None:
        _collect(errors, _check_name_free, hook.organization_id, clean["name"], hook.pk)
    _raise_collected(errors)
    with transaction.atomic():
        locked = Hook.objects.all_tenants().select_for_update(of=("self",)).get(pk=hook.pk)
        before = _audit_state(locked)
        for key, value in clean.items():
            if key == "secret":
                _set_secret(locked, value)
            else:
                setattr(locked, key, value)
        after = _audit_state(locked)
        if after == before:
            return locked
        try:
            with transaction.atomic():
                locked.save()
        except IntegrityError:
            raise ServiceError({"name": "A hook with this name was just created: choose another name."}) from None
        audit.record(actor=actor, verb="hook.update", obj=locked, before=before, after=after)
    return locked


def hook_delete(*, actor: User, hook: Hook) -> None:
    """Remove a hook and its delivery log. Queued deliveries of it are dropped with it."""
    require(actor, "hooks.manage", hook)
    with transaction.atomic():
        locked = Hook.objects.all_tenants().select_for_update(of=("self",)).get(pk=hook.pk)
        audit.record(actor=actor, verb="hook.delete", obj=locked, before=_audit_state(locked))
        locked.delete()


def hook_test(*, actor: User, hook: Hook) -> HookDelivery:
    """Send a signed "test" event now (even to a disabled hook: test before enabling) and log it. A before-launch
    hook's answer is read as a verdict, so a receiver that would fail a launch fails its test too."""
    require(actor, "hooks.manage", hook)
    payload = {"event": TEST_EVENT, "hook": {"id": hook.pk, "name": hook.name, "phase": hook.phase}}
    delivery_id = _new_delivery_id()
    outcome = _call(hook, event=TEST_EVENT, payload=payload, delivery_id=delivery_id)
    state, message = HookDelivery.State.DELIVERED, ""
    if outcome.problem:
        state, message = HookDelivery.State.FAILED, outcome.problem
    elif hook.phase == Hook.Phase.BEFORE:
        allow, text = _verdict_of(outcome)
        if allow is None:
            state, message = HookDelivery.State.FAILED, text
        elif allow is False:
            state, message = HookDelivery.State.VETOED, text or "The hook refused (no message)."
    log.info("hook %s: test delivery %s %s %s", hook.pk, delivery_id, state, message)
    with transaction.atomic():
        delivery = _record(hook, event=TEST_EVENT, delivery_id=delivery_id, payload=payload, outcome=outcome,
                           state=state, message=message)
        audit.record(actor=actor, verb="hook.test", obj=hook,
                     extra={"delivery": delivery_id, "state": state, "status_code": delivery.status_code})
    return delivery
