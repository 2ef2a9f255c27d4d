"""Launch hooks against a real HTTP receiver on 127.0.0.1: signing and verification, before-launch verdicts (allow,
veto, failures and the failure policy), after-launch deliveries with their retries, the outbound rules at create and
at send, the secret never leaving, and who may manage hooks."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.test import RequestFactory
from django.utils import timezone

from apps.catalog.models import CatalogItem
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from apps.deployments import demo_hook, hooks
from apps.deployments.hook_tasks import hook_deliveries_resume
from apps.deployments.hooks import hook_create, hook_delete, hook_sign, hook_test, hook_update, hook_verify
from apps.deployments.models import Deployment, Hook, HookDelivery
from apps.deployments.states import DeploymentState, InstanceState
from tests.catalog.test_profiles import make_image, make_profile
from tests.deployments.test_states import make_instance

pytestmark = pytest.mark.django_db

SECRET = "hook-secret-0123456789-abcdef"
LOOPBACK = ["127.0.0.0/8"]


# --- a real receiver ---------------------------------------------------------------------------------------------
class Receiver:
    """A ThreadingHTTPServer that records every request and answers what the test scripted: a list of answers
    (the last one repeats), each (status, body) or "hang" (no answer until the test ends)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[Any] = [(200, {"allow": True})]
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                index = min(len(receiver.requests), len(receiver.answers)) - 1
                answer = receiver.answers[index]
                if answer == "hang":
                    receiver.release.wait(10)
                    return
                if answer == "trickle":  # each byte well within the timeout, the whole answer far beyond it
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}":
                        if receiver.release.wait(0.2):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                status, content = answer
                data = content if isinstance(content, bytes) else json.dumps(content).encode()
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/landed")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *answers: Any) -> None:
        self.answers = list(answers)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def receiver(settings):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = LOOPBACK
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def deployment(acme, web, connor):
    image = make_image(web, "Debian", "12")
    profile = make_profile(acme, "small", 1, 2048)
    item = CatalogItem.objects.create(organization=acme, project=web, name="Debian", slug="debian", kind="image",
                                      image=image, profile=profile)
    d = Deployment.objects.create(
        organization=acme, project=web, owner=connor, name="app", catalog_item=item, state=DeploymentState.REQUESTED,
        parameters={"web_count": 1, "db_password": "hunter2-launch-param"}, estimated_hourly=Decimal("0.04"),
    )
    instance = make_instance(d)
    instance.image = image
    instance.user_data = "#!/bin/sh\necho user-data-script"
    instance.save()
    return d


def make_hook(sam, acme, url, *, name="policy", phase=Hook.Phase.BEFORE, secret=SECRET, **kwargs) -> Hook:
    return hook_create(actor=sam, organization=acme, name=name, url=url, phase=phase, secret=secret, **kwargs)


def deliveries() -> Any:
    return HookDelivery.objects.all_tenants()


def make_due(delivery: HookDelivery) -> None:
    """Bring the retry time forward instead of waiting for it."""
    deliveries().filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))


# --- signing -------------------------------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_timestamp_dot_body_and_verify_refuses_tampering_and_replays():
    body = b'{"event":"test"}'
    signature = hook_sign(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"
    assert hook_verify(SECRET, "1700000000", body, signature, now=1_700_000_100)
    assert hook_verify(SECRET, 1_700_000_000, body.decode(), signature, now=1_700_000_000 - 300)
    assert not hook_verify(SECRET, "1700000000", b'{"event":"tesT"}', signature, now=1_700_000_100)  # body
    assert not hook_verify("another-secret-0123456789", "1700000000", body, signature, now=1_700_000_100)
    assert not hook_verify(SECRET, "1700000001", body, signature, now=1_700_000_100)  # timestamp is signed
    assert not hook_verify(SECRET, "1700000000", body, signature, now=1_700_000_301)  # too old: a replay
    assert not hook_verify(SECRET, "1700000000", body, signature, now=1_699_999_699)  # from the future
    assert hook_verify(SECRET, "1700000000", body, signature, now=1_700_000_400, tolerance=600)
    assert not hook_verify(SECRET, "1700000000", body, signature.replace("v1=", "v0="), now=1_700_000_100)
    assert not hook_verify(SECRET, "1700000000", body, "", now=1_700_000_100)
    assert not hook_verify(SECRET, "17e8", body, hook_sign(SECRET, "17e8", body), now=1_700_000_100)
    assert not hook_verify(SECRET, "", body, hook_sign(SECRET, "", body))


# --- before launch -------------------------------------------------------------------------------------------------
def test_an_allowing_hook_gets_a_signed_request_with_the_plan_and_lets_the_launch_through(
    receiver, sam, acme, deployment
):
    hook = make_hook(sam, acme, receiver.url)
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict == hooks.HookVerdict(True)

    [request] = receiver.requests
    headers = request["headers"]
    assert request["path"] == "/hook" and headers["Content-Type"] == "application/json"
    assert headers["X-Skyport-Event"] == "before_launch"
    assert hook_verify(SECRET, headers["X-Skyport-Timestamp"], request["body"], headers["X-Skyport-Signature"])
    assert not hook_verify(SECRET, headers["X-Skyport-Timestamp"], request["body"] + b" ",
                           headers["X-Skyport-Signature"])
    payload = json.loads(request["body"])
    assert payload["event"] == "before_launch"
    d = payload["deployment"]
    assert (d["id"], d["name"], d["policy"], d["estimated_hourly"]) == (deployment.pk, "app", "cheapest", "0.04000")
    assert d["project"] == {"id": deployment.project_id, "slug": "web", "name": deployment.project.name}
    assert d["owner"] == {"id": deployment.owner_id, "username": "connor"}
    assert d["catalog_item"] == {"id": deployment.catalog_item_id, "slug": "debian"}
    assert d["parameters"] == {"web_count": 1, "db_password": "[redacted]"}
    assert payload["instances"] == [{
        "name": "app-web-1", "role": "web", "account": "acct-web-1", "region": "region-1", "size": "small",
        "vcpus": 1, "ram_mb": 2048, "disk_gb": 20, "image": "Debian 12",
    }]
    assert b"user-data-script" not in request["body"] and b"hunter2" not in request["body"]

    [delivery] = deliveries().filter(hook=hook)
    assert delivery.delivery_id == headers["X-Skyport-Delivery"]
    assert (delivery.event, delivery.state, delivery.status_code, delivery.attempts) == (
        "before_launch", HookDelivery.State.DELIVERED, 200, 1)
    assert delivery.deployment_id == deployment.pk and delivery.payload == payload
    assert delivery.duration_ms is not None and delivery.finished_at is not None


def test_hooks_are_asked_in_name_order_and_the_first_veto_stops_with_its_message(receiver, sam, acme, deployment):
    second = Receiver()
    third = Receiver()
    try:
        make_hook(sam, acme, receiver.url, name="a-budget")
        make_hook(sam, acme, second.url, name="b-naming")
        make_hook(sam, acme, third.url, name="c-never")
        second.answer((200, {"allow": False, "message": "  Names must start\nwith a team prefix.  " + "x" * 600}))
        verdict = hooks.hooks_before_launch(deployment)
        assert not verdict.allowed and verdict.hook == "b-naming"
        assert verdict.message.startswith("Names must start with a team prefix. xxx")
        assert len(verdict.message) == 500
        assert len(receiver.requests) == 1 and len(second.requests) == 1 and third.requests == []
        states = dict(deliveries().values_list("hook__name", "state"))
        assert states == {"a-budget": HookDelivery.State.DELIVERED, "b-naming": HookDelivery.State.VETOED}
        assert deliveries().get(hook__name="b-naming").message == verdict.message
    finally:
        second.stop()
        third.stop()


def test_a_veto_without_words_gets_a_default_message(receiver, sam, acme, deployment):
    make_hook(sam, acme, receiver.url, name="quiet")
    receiver.answer((200, {"allow": False}))
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict == hooks.HookVerdict(False, "The launch policy hook quiet refused this launch.", "quiet")


def test_only_enabled_before_launch_hooks_of_the_organisation_are_asked(receiver, sam, mallory, acme, globex,
                                                                        deployment):
    make_hook(sam, acme, receiver.url, name="off", is_enabled=False)
    make_hook(sam, acme, receiver.url, name="told-later", phase=Hook.Phase.AFTER)
    make_hook(mallory, globex, receiver.url, name="globex-policy")
    receiver.answer((200, {"allow": False, "message": "nobody should ask me"}))
    assert hooks.hooks_before_launch(deployment) == hooks.HookVerdict(True)
    assert receiver.requests == [] and not deliveries().exists()


def test_a_timeout_denies_by_default(receiver, sam, acme, deployment):
    make_hook(sam, acme, receiver.url, name="slow", timeout_seconds=1)
    receiver.answer("hang")
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict == hooks.HookVerdict(False, "Launch policy hook slow did not answer: no answer within 1 s", "slow")
    [delivery] = deliveries()
    assert (delivery.state, delivery.status_code, delivery.message) == (
        HookDelivery.State.FAILED, None, "no answer within 1 s")


def test_the_timeout_bounds_the_whole_call_not_each_wait(receiver, sam, acme, deployment):
    make_hook(sam, acme, receiver.url, name="trickler", timeout_seconds=1)
    receiver.answer("trickle")
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict.message == "Launch policy hook trickler did not answer: no answer within 1 s"


def test_a_timeout_lets_the_launch_through_when_the_hook_allows_on_failure(receiver, sam, acme, deployment):
    make_hook(sam, acme, receiver.url, name="slow", timeout_seconds=1, allow_on_failure=True)
    receiver.answer("hang")
    assert hooks.hooks_before_launch(deployment) == hooks.HookVerdict(True)
    [delivery] = deliveries()
    assert delivery.state == HookDelivery.State.FAILED
    assert delivery.message == "no answer within 1 s (let through: the hook allows launches when it fails)"


@pytest.mark.parametrize(("answer", "why", "status"), [
    ((500, {"allow": True}), "HTTP 500 Internal Server Error", 500),
    ((404, b"not here"), "HTTP 404 Not Found", 404),
    ((200, b"<html>allow</html>"), "the answer is not valid JSON", 200),
    ((200, {"allowed": True}), 'the answer has no "allow": true or false', 200),
    ((200, {"allow": "yes"}), 'the answer has no "allow": true or false', 200),
    ((302, b""), "HTTP 302 (redirects are not followed)", 302),
])
def test_an_error_status_or_an_unreadable_answer_is_a_failure(receiver, sam, acme, deployment, answer, why, status):
    make_hook(sam, acme, receiver.url, name="strict")
    receiver.answer(answer, (200, {"allow": True}))
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict == hooks.HookVerdict(False, f"Launch policy hook strict did not answer: {why}", "strict")
    assert [r["path"] for r in receiver.requests] == ["/hook"]  # a redirect is not followed
    [delivery] = deliveries()
    assert (delivery.state, delivery.status_code, delivery.message) == (HookDelivery.State.FAILED, status, why)


def test_a_refused_connection_is_a_failure(settings, sam, acme, deployment):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = LOOPBACK
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make_hook(sam, acme, f"http://127.0.0.1:{port}/", name="gone")
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict.message == "Launch policy hook gone did not answer: the connection was refused"


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_certificates_are_verified(receiver, sam, acme, deployment, tmp_path):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    receiver.httpd.socket = context.wrap_socket(receiver.httpd.socket, server_side=True)
    make_hook(sam, acme, f"https://127.0.0.1:{receiver.port}/hook", name="tls")
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict.message.startswith("Launch policy hook tls did not answer: the TLS certificate was refused")
    assert receiver.requests == []  # nothing was sent to an unverified server


def test_hooks_before_launch_refuses_to_run_inside_a_transaction(receiver, sam, acme, deployment):
    make_hook(sam, acme, receiver.url)
    with transaction.atomic(), pytest.raises(hooks.HookInTransactionError):
        hooks.hooks_before_launch(deployment)
    assert receiver.requests == []


# --- after launch --------------------------------------------------------------------------------------------------
def test_after_launch_delivery_is_sent_on_commit_retried_after_a_500_and_delivered_later(
    receiver, sam, acme, deployment, django_capture_on_commit_callbacks
):
    make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    make_hook(sam, acme, receiver.url, name="policy")  # before-launch: not told
    instance = deployment.instances.get()
    instance.state, instance.private_ips, instance.public_ips = InstanceState.RUNNING, ["10.0.0.5"], ["203.0.113.7"]
    instance.save()
    receiver.answer((500, b"busy"), (200, b"thanks"))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        [queued] = hooks.hooks_after_launch(deployment, "instance.running", instance)
        assert receiver.requests == []  # nothing leaves before the commit
    assert len(callbacks) == 1
    queued.refresh_from_db()
    before_retry = timezone.now()
    assert (queued.state, queued.attempts, queued.status_code, queued.message) == (
        HookDelivery.State.PENDING, 1, 500, "HTTP 500 Internal Server Error")
    assert queued.next_attempt_at > before_retry + datetime.timedelta(seconds=20)

    assert hook_deliveries_resume() == 0  # not due yet
    assert len(receiver.requests) == 1
    make_due(queued)
    assert hook_deliveries_resume() == 1
    queued.refresh_from_db()
    assert (queued.state, queued.attempts, queued.status_code, queued.message, queued.next_attempt_at) == (
        HookDelivery.State.DELIVERED, 2, 200, "", None)
    assert queued.finished_at is not None

    first, second = receiver.requests
    assert first["headers"]["X-Skyport-Delivery"] == second["headers"]["X-Skyport-Delivery"] == queued.delivery_id
    assert first["body"] == second["body"]
    assert second["headers"]["X-Skyport-Event"] == "instance.running"
    for request in (first, second):
        h = request["headers"]
        assert hook_verify(SECRET, h["X-Skyport-Timestamp"], request["body"], h["X-Skyport-Signature"])
    payload = json.loads(second["body"])
    assert payload["event"] == "instance.running" and payload["deployment"]["name"] == "app"
    assert payload["instance"] == {"name": "app-web-1", "role": "web", "state": "running",
                                   "private_ips": ["10.0.0.5"], "public_ips": ["203.0.113.7"]}
    assert hook_deliveries_resume() == 0  # delivered: never sent again


def test_after_launch_gives_up_after_five_attempts_with_growing_delays(receiver, sam, acme, deployment,
                                                                       django_capture_on_commit_callbacks):
    make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    receiver.answer((503, b"down"))
    with django_capture_on_commit_callbacks(execute=True):
        [delivery] = hooks.hooks_after_launch(deployment, "deployment.deleted")
    for attempt in range(1, 5):
        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempts) == (HookDelivery.State.PENDING, attempt)
        upper = timezone.now() + hooks.hook_retry_delay(attempt)
        assert upper - datetime.timedelta(seconds=5) < delivery.next_attempt_at <= upper
        make_due(delivery)
        assert hook_deliveries_resume() == 1
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == (HookDelivery.State.FAILED, 5, None)
    assert delivery.message == "Gave up after 5 attempts: HTTP 503 Service Unavailable"
    assert len(receiver.requests) == 5
    assert [hooks.hook_retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 120, 480, 1920]
    make_due(delivery)
    assert hook_deliveries_resume() == 0 and len(receiver.requests) == 5


def test_after_launch_never_fails_the_caller_and_a_rolled_back_caller_sends_nothing(
    receiver, sam, acme, deployment, django_capture_on_commit_callbacks
):
    make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER, timeout_seconds=1)
    receiver.answer("hang")
    with django_capture_on_commit_callbacks(execute=True):
        hooks.hooks_after_launch(deployment, "deployment.deleted")  # the receiver hangs: no exception here
    [delivery] = deliveries()
    assert (delivery.state, delivery.message) == (HookDelivery.State.PENDING, "no answer within 1 s")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        try:
            with transaction.atomic():
                hooks.hooks_after_launch(deployment, "deployment.deleted")
                raise RuntimeError("the delete failed")
        except RuntimeError:
            pass
    assert callbacks == [] and deliveries().count() == 1 and len(receiver.requests) == 1
    with pytest.raises(ValueError, match="unknown after-launch event"):
        hooks.hooks_after_launch(deployment, "instance.exploded")


def test_a_delivery_of_a_hook_disabled_meanwhile_is_not_sent(receiver, sam, acme, deployment):
    hook = make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    [delivery] = hooks.hooks_after_launch(deployment, "deployment.deleted")  # callbacks not run: still queued
    hook_update(actor=sam, hook=hook, is_enabled=False)
    assert hook_deliveries_resume() == 1
    delivery.refresh_from_db()
    assert delivery.state == HookDelivery.State.FAILED and receiver.requests == []


# --- outbound safety -----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_dns(monkeypatch):
    """Names of the test: hooks.corp.test resolves to a private address; hooks.rebind.test answers a public address
    to whoever checks it and the loopback address to a connection made by name (DNS rebinding)."""
    import sys

    real = socket.getaddrinfo
    hits: list[str] = []
    real_connect = socket.create_connection

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "hooks.corp.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("10.1.2.3", port or 80))]
        if host == "hooks.rebind.test":
            inward = sys._getframe(1).f_code.co_name == "create_connection"
            address = "127.0.0.1" if inward else "93.184.216.34"
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 80))]
        return real(host, port, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        hits.append(address[0])
        if address[0] == "93.184.216.34":
            raise ConnectionRefusedError("no internet in tests")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return hits


@pytest.mark.parametrize(("url", "allowed", "why"), [
    ("http://169.254.169.254/latest/meta-data/", LOOPBACK, "link-local"),
    ("http://169.254.169.254/latest/meta-data/", [*LOOPBACK, "169.254.0.0/16"], "link-local"),
    ("http://[fe80::1]/hook", ["::/0"], "link-local"),
    ("http://[::ffff:169.254.169.254]/", ["0.0.0.0/0"], "link-local"),
    ("http://10.0.0.5/hook", LOOPBACK, "private address"),
    ("http://hooks.corp.test/hook", LOOPBACK, "private address"),
    ("http://127.0.0.1:9/hook", [], "loopback"),
    ("ftp://hooks.example/hook", LOOPBACK, "must start with"),
    ("http://user:pw@127.0.0.1/hook", LOOPBACK, "credentials"),
])
def test_unsafe_urls_are_refused_at_create_and_nothing_is_written(settings, fake_dns, sam, acme, url, allowed, why):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = allowed
    with pytest.raises(ServiceError) as exc:
        make_hook(sam, acme, url)
    assert why in exc.value.message_dict["url"][0]
    assert not Hook.objects.all_tenants().exists()
    assert not AuditEvent.objects.all_tenants().filter(verb__startswith="hook.").exists()
    assert fake_dns == []  # not even a connection attempt


def test_a_url_that_became_unsafe_is_refused_again_at_send_and_nothing_is_sent(
    receiver, settings, sam, acme, deployment, django_capture_on_commit_callbacks
):
    make_hook(sam, acme, receiver.url, name="policy", allow_on_failure=True)
    make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = []  # the operator closed the loopback network
    verdict = hooks.hooks_before_launch(deployment)
    assert verdict.allowed  # a failure, let through by this hook's policy
    with django_capture_on_commit_callbacks(execute=True):
        hooks.hooks_after_launch(deployment, "deployment.deleted")
    assert receiver.requests == []
    before = deliveries().get(hook__name="policy")
    after = deliveries().get(hook__name="inventory")
    assert before.state == after.state == HookDelivery.State.FAILED
    assert after.attempts == 1 and after.next_attempt_at is None  # waiting does not make it safe: no retry
    for delivery in (before, after):
        assert "refused by the outbound rules" in delivery.message and "loopback" in delivery.message

    Hook.objects.all_tenants().filter(name="policy").update(allow_on_failure=False)
    verdict = hooks.hooks_before_launch(deployment)
    assert not verdict.allowed and verdict.message.startswith("Launch policy hook policy did not answer: refused")


def test_a_name_that_rebinds_inward_is_connected_to_at_the_checked_address_only(
    receiver, settings, fake_dns, sam, acme, deployment
):
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = []
    make_hook(sam, acme, f"http://hooks.rebind.test:{receiver.port}/hook", name="rebind")
    verdict = hooks.hooks_before_launch(deployment)
    assert not verdict.allowed and verdict.message.endswith("the connection was refused")
    assert fake_dns == ["93.184.216.34"]  # the checked address, never the loopback one
    assert receiver.requests == []


def test_a_name_resolving_to_a_private_address_at_send_is_refused(receiver, fake_dns, sam, acme, deployment):
    hook = make_hook(sam, acme, receiver.url, name="moved")
    Hook.objects.all_tenants().filter(pk=hook.pk).update(url="http://hooks.corp.test/hook")  # as if DNS changed
    verdict = hooks.hooks_before_launch(deployment)
    assert not verdict.allowed and "10.1.2.3 is a private address" in verdict.message
    assert fake_dns == [] and receiver.requests == []


# --- services ------------------------------------------------------------------------------------------------------
def test_create_stores_the_secret_encrypted_and_audits_without_it(receiver, sam, acme):
    hook = make_hook(sam, acme, receiver.url, timeout_seconds=7)
    hook.refresh_from_db()
    assert SECRET not in hook.secret_encrypted and hook.secret_last4 == SECRET[-4:]
    assert (hook.timeout_seconds, hook.allow_on_failure, hook.is_enabled, hook.created_by) == (7, False, True, sam)
    event = AuditEvent.objects.all_tenants().get(verb="hook.create")
    assert event.changes["url"]["to"] == receiver.url and event.changes["secret_last4"]["to"] == "[redacted]"
    assert SECRET not in json.dumps(event.changes)


@pytest.mark.parametrize(("fields", "field"), [
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": 31}, "timeout_seconds"),
    ({"timeout_seconds": "soon"}, "timeout_seconds"),
    ({"timeout_seconds": True}, "timeout_seconds"),
    ({"secret": "short-secret-15"}, "secret"),
    ({"name": "  "}, "name"),
    ({"phase": "during_launch"}, "phase"),
    ({"url": ""}, "url"),
    ({"allow_on_failure": "yes"}, "allow_on_failure"),
])
def test_bad_input_is_refused_by_field_and_writes_nothing(receiver, sam, acme, fields, field):
    values = {"name": "policy", "url": receiver.url, "phase": Hook.Phase.BEFORE, "secret": SECRET, **fields}
    with pytest.raises(ServiceError) as exc:
        hook_create(actor=sam, organization=acme, **values)
    assert list(exc.value.message_dict) == [field]
    assert not Hook.objects.all_tenants().exists()
    assert not AuditEvent.objects.all_tenants().filter(verb__startswith="hook.").exists()


def test_every_bad_field_is_reported_at_once(receiver, sam, acme):
    with pytest.raises(ServiceError) as exc:
        hook_create(actor=sam, organization=acme, name="", url="http://169.254.169.254/", phase="x", secret="s",
                    timeout_seconds=99)
    assert set(exc.value.message_dict) == {"name", "url", "phase", "secret", "timeout_seconds"}


def test_a_duplicate_name_is_refused_in_the_organisation_only(receiver, sam, mallory, acme, globex):
    make_hook(sam, acme, receiver.url, name="Policy")
    with pytest.raises(ServiceError) as exc:
        make_hook(sam, acme, receiver.url, name="policy")
    assert "already has a hook" in exc.value.message_dict["name"][0]
    assert Hook.objects.all_tenants().filter(organization=acme).count() == 1
    make_hook(mallory, globex, receiver.url, name="Policy")  # another organisation may use the name


def test_update_rotates_the_secret_only_when_given_and_refuses_bad_fields_without_change(
    receiver, sam, acme, deployment
):
    hook = make_hook(sam, acme, receiver.url)
    encrypted = hook.secret_encrypted
    hook = hook_update(actor=sam, hook=hook, timeout_seconds=9, secret="")
    assert (hook.timeout_seconds, hook.secret_encrypted) == (9, encrypted)  # an empty secret keeps it

    new_secret = "rotated-secret-9876543210-zyx"
    hook = hook_update(actor=sam, hook=hook, secret=new_secret)
    assert hook.secret_last4 == new_secret[-4:]
    hooks.hooks_before_launch(deployment)
    h, body = receiver.requests[-1]["headers"], receiver.requests[-1]["body"]
    assert hook_verify(new_secret, h["X-Skyport-Timestamp"], body, h["X-Skyport-Signature"])
    assert not hook_verify(SECRET, h["X-Skyport-Timestamp"], body, h["X-Skyport-Signature"])
    rotation = AuditEvent.objects.all_tenants().filter(verb="hook.update").order_by("-pk").first()
    assert set(rotation.changes) == {"fingerprint", "secret_last4"}

    with pytest.raises(ServiceError) as exc:
        hook_update(actor=sam, hook=hook, url="http://169.254.169.254/", timeout_seconds=5)
    assert set(exc.value.message_dict) == {"url"}
    hook.refresh_from_db()
    assert (hook.url, hook.timeout_seconds) == (receiver.url, 9)
    with pytest.raises(TypeError):
        hook_update(actor=sam, hook=hook, secret_encrypted="x")
    audits = AuditEvent.objects.all_tenants().filter(verb="hook.update").count()
    hook_update(actor=sam, hook=hook, timeout_seconds=9)  # nothing changes: nothing is written
    assert AuditEvent.objects.all_tenants().filter(verb="hook.update").count() == audits


def test_delete_removes_the_hook_and_its_deliveries_with_an_audit_event(receiver, sam, acme, deployment):
    hook = make_hook(sam, acme, receiver.url)
    hooks.hooks_before_launch(deployment)
    hook_delete(actor=sam, hook=hook)
    assert not Hook.objects.all_tenants().exists() and not deliveries().exists()
    assert AuditEvent.objects.all_tenants().get(verb="hook.delete").object_label == "policy"


def test_test_sends_a_signed_test_event_now_and_logs_it(receiver, sam, acme):
    hook = make_hook(sam, acme, receiver.url, is_enabled=False)
    delivery = hook_test(actor=sam, hook=hook)
    [request] = receiver.requests
    h = request["headers"]
    assert h["X-Skyport-Event"] == "test" and h["X-Skyport-Delivery"] == delivery.delivery_id
    assert hook_verify(SECRET, h["X-Skyport-Timestamp"], request["body"], h["X-Skyport-Signature"])
    assert json.loads(request["body"]) == {"event": "test", "hook": {"id": hook.pk, "name": "policy",
                                                                      "phase": "before_launch"}}
    assert (delivery.state, delivery.status_code, delivery.deployment) == (HookDelivery.State.DELIVERED, 200, None)
    assert AuditEvent.objects.all_tenants().filter(verb="hook.test", object_id=str(hook.pk)).exists()

    receiver.answer((200, b"ok"))  # not a verdict: a before-launch hook that answers this would fail a launch
    assert hook_test(actor=sam, hook=hook).state == HookDelivery.State.FAILED
    after = make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    assert hook_test(actor=sam, hook=after).state == HookDelivery.State.DELIVERED  # a 2xx is enough there


# --- the secret never leaves ---------------------------------------------------------------------------------------
def test_the_secret_appears_in_no_delivery_log_line_or_audit_row(receiver, sam, acme, deployment, caplog,
                                                                   django_capture_on_commit_callbacks):
    caplog.set_level(logging.DEBUG)
    rotated = "rotated-canary-secret-7f3a9c1e"
    policy = make_hook(sam, acme, receiver.url, name="policy", allow_on_failure=True)
    inventory = make_hook(sam, acme, receiver.url, name="inventory", phase=Hook.Phase.AFTER)
    receiver.answer((200, {"allow": True}), (200, b"not json"), (500, b"no"), (200, b"ok"))
    hooks.hooks_before_launch(deployment)
    hooks.hooks_before_launch(deployment)
    with django_capture_on_commit_callbacks(execute=True):
        [delivery] = hooks.hooks_after_launch(deployment, "deployment.deleted")
    make_due(delivery)
    hook_deliveries_resume()
    hook_test(actor=sam, hook=policy)
    hook_update(actor=sam, hook=policy, secret=rotated)
    hook_test(actor=sam, hook=policy)
    hook_delete(actor=sam, hook=inventory)
    assert len(receiver.requests) == 6

    rows = list(deliveries().values("payload", "message", "delivery_id"))
    assert len(rows) == 4
    audit_rows = list(AuditEvent.objects.all_tenants().filter(verb__startswith="hook.").values())
    assert len(audit_rows) == 6  # two creates, two tests, a rotation, a delete
    texts = [json.dumps(rows, default=str), json.dumps(audit_rows, default=str), caplog.text,
             *(r["body"].decode() for r in receiver.requests)]
    for secret in (SECRET, rotated):
        for text in texts:
            assert secret not in text
    assert any("hook" in r.getMessage() for r in caplog.records)  # the sends were logged


# --- who may manage hooks ------------------------------------------------------------------------------------------
def test_only_org_admins_manage_hooks_and_another_organisation_cannot_touch_them(
    receiver, sam, connor, dennis, mallory, acme, globex
):
    hook = make_hook(sam, acme, receiver.url)
    for outsider in (connor, dennis, mallory):
        with pytest.raises(PermissionDenied):
            make_hook(outsider, acme, receiver.url, name=f"{outsider.username}-hook")
        with pytest.raises(PermissionDenied):
            hook_update(actor=outsider, hook=hook, url=f"http://127.0.0.1:{receiver.port}/elsewhere")
        with pytest.raises(PermissionDenied):
            hook_update(actor=outsider, hook=hook, secret="attacker-chosen-secret-0000")
        with pytest.raises(PermissionDenied):
            hook_test(actor=outsider, hook=hook)
        with pytest.raises(PermissionDenied):
            hook_delete(actor=outsider, hook=hook)
    refreshed = Hook.objects.all_tenants().get()
    assert (refreshed.name, refreshed.url, refreshed.secret_encrypted) == (hook.name, hook.url, hook.secret_encrypted)
    assert receiver.requests == [] and not deliveries().exists()
    assert AuditEvent.objects.all_tenants().filter(verb__startswith="hook.").count() == 1  # the create only
    assert list(Hook.objects.for_user(sam)) == [hook]
    for outsider in (connor, dennis, mallory):
        assert not Hook.objects.for_user(outsider).exists()
        assert not HookDelivery.objects.for_user(outsider).exists()


# --- the demo receiver ---------------------------------------------------------------------------------------------
def _signed_post(body: dict[str, Any], secret: str, *, timestamp: int | None = None, tamper: bool = False):
    raw = json.dumps(body).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    signature = hook_sign(secret, ts, raw)
    return RequestFactory().post(
        demo_hook.DEMO_HOOK_PATH, data=raw + (b" " if tamper else b""), content_type="application/json",
        headers={"X-Skyport-Timestamp": str(ts), "X-Skyport-Signature": signature},
    )


@pytest.mark.django_db(transaction=True)  # the async view reads the hook on a connection of its own
def test_demo_receiver_verifies_the_signature_and_vetoes_forbidden_names(settings, sam, acme):
    from asgiref.sync import async_to_sync

    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = LOOPBACK
    make_hook(sam, acme, f"http://127.0.0.1:8000{demo_hook.DEMO_HOOK_PATH}", name="demo")
    view = async_to_sync(demo_hook.name_policy)

    def ask(name: str, **kwargs: Any):
        response = view(_signed_post({"event": "before_launch", "deployment": {"name": name}}, **kwargs))
        return response.status_code, json.loads(response.content)

    assert ask("app", secret=SECRET) == (200, {"allow": True})
    assert ask("my-Forbidden-app", secret=SECRET) == (200, {"allow": False, "message": demo_hook.VETO_MESSAGE})
    assert ask("app", secret="not-the-hook-secret-000")[0] == 401
    assert ask("app", secret=SECRET, tamper=True)[0] == 401
    assert ask("app", secret=SECRET, timestamp=int(time.time()) - 3600)[0] == 401
    unsigned = RequestFactory().post(demo_hook.DEMO_HOOK_PATH, data=b"{}", content_type="application/json")
    assert view(unsigned).status_code == 401
    assert view(RequestFactory().get(demo_hook.DEMO_HOOK_PATH)).status_code == 405


@pytest.mark.django_db(transaction=True)
def test_demo_receiver_end_to_end_over_http(settings, personas, deployment_factory_tx):
    """hooks_before_launch → a real HTTP server running the demo view → the veto comes back to the launch."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from asgiref.sync import async_to_sync
    from django.core.handlers.wsgi import WSGIRequest
    from django.db import connections

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def app(environ, start_response):
        try:
            response = async_to_sync(demo_hook.name_policy)(WSGIRequest(environ))
            start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
            return [response.content]
        finally:
            connections.close_all()  # this thread's connection

    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = LOOPBACK
    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sam, acme = personas["sam"], deployment_factory_tx.organization
        url = f"http://127.0.0.1:{server.server_address[1]}{demo_hook.DEMO_HOOK_PATH}"
        hook = hook_create(actor=sam, organization=acme, name="Acme naming policy", url=url,
                           phase=Hook.Phase.BEFORE, secret="demo-secret-only-the-row-knows")
        assert hooks.hooks_before_launch(deployment_factory_tx) == hooks.HookVerdict(True)
        Deployment.objects.all_tenants().filter(pk=deployment_factory_tx.pk).update(name="forbidden-app")
        verdict = hooks.hooks_before_launch(deployment_factory_tx)
        assert verdict == hooks.HookVerdict(False, demo_hook.VETO_MESSAGE, "Acme naming policy")
        assert hook_test(actor=sam, hook=hook).state == HookDelivery.State.DELIVERED
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def deployment_factory_tx(personas):
    from apps.accounts.models import Organization, Project

    acme = Organization.objects.all_tenants().get(slug="acme")
    web = Project.objects.all_tenants().get(organization=acme, slug="web")
    return Deployment.objects.create(organization=acme, project=web, owner=personas["connor"], name="app")
