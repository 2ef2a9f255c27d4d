"""The Operation protocol against the simulated cloud: leases, crash recovery, retries, resumable steps."""

from __future__ import annotations

import datetime
import threading

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from apps.clouds.drivers.base import CreateServer, ServerState
from apps.clouds.drivers.sim import SimDriver, SimulatedCrash
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.operations import (
    TAG_INSTALLATION,
    TAG_OPERATION,
    OperationInTransactionError,
    operation_claim,
    operation_run,
    operation_start,
)
from apps.clouds.operations_tasks import operation_enqueue, operations_resume
from apps.clouds.sim.models import SimCloud, SimPublicIP, SimServer
from apps.clouds.sim.services import sim_advance, sim_call_count, sim_cloud_create, sim_fault_add
from tests.clouds.fixtures_sim import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

EP = "sim://ops"
KEY = "sim-ops-key-0001"
SERVER = {"name": "app-1", "image_id": "debian-12", "size_id": "small", "network_id": "net-private"}


@pytest.fixture
def account(acme):
    sim_cloud_create(EP, api_key=KEY, seed=3, regions=["r1"], frozen_clock=True)
    acct = CloudAccount(
        organization=acme, name="Ops sim", slug="ops-sim", kind="sim", endpoint=EP, regions=["r1"], default_region="r1"
    )
    acct.set_credentials({"api_key": KEY}, secret_field="api_key")
    acct.save()
    return acct


def _start(account, kind="create_server", key="k-1", **params):
    return operation_start(account=account, region="r1", kind=kind, params=params or dict(SERVER), idempotency_key=key)


def _make_due(op):
    Operation.objects.all_tenants().filter(pk=op.pk).update(next_attempt_at=None)


def _drive(op, worker="w1", rounds=30, step=10):
    """Run until finished, advancing the sim clock and making parked operations due (time passes)."""
    for _ in range(rounds):
        _make_due(op)
        operation_run(op.pk, worker_id=worker)
        op.refresh_from_db()
        if op.state in (Operation.State.SUCCEEDED, Operation.State.FAILED):
            return op
        sim_advance(EP, step)
    raise AssertionError(f"operation still {op.state} at step {op.step}: {op.error}")


def _servers():
    return list(SimServer.objects.filter(cloud__endpoint=EP))


def test_start_commits_intent_once_per_key(account):
    op = _start(account)
    again = _start(account, name="something-else")
    assert again.pk == op.pk
    assert Operation.objects.all_tenants().filter(idempotency_key="k-1").count() == 1
    assert (op.state, op.step, op.attempt, op.steps) == ("pending", 0, 0, ["create", "wait_running"])
    assert sim_call_count(EP) == 0  # starting makes no provider call


def test_create_with_public_ip_tags_and_resumes_after_waiting(account, settings):
    settings.SKYPORT_INSTALLATION_ID = "inst-test"
    op = _start(account, **SERVER, want_public_ip=True)
    assert op.steps == ["create", "wait_running", "allocate_ip", "attach_ip"]
    operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    # parked while the server builds: pending, not an attempt, at the wait step
    assert (op.state, op.step, op.attempt, op.lease_owner) == ("pending", 1, 0, "")
    assert op.next_attempt_at > timezone.now()
    op = _drive(op)
    assert op.state == "succeeded" and op.finished_at and not op.error
    [row] = _servers()
    assert row.tags[TAG_INSTALLATION] == "inst-test" and row.tags[TAG_OPERATION] == str(op.pk)
    assert op.result["server_id"] == row.server_id
    server = SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP).get_server(row.server_id)
    assert server.public_ips == (op.result["public_ip"],)


def test_the_address_step_reads_the_addresses_the_wait_just_saw(account):
    SimCloud.objects.filter(endpoint=EP).update(durations={"build": 5})
    op = _start(account, **SERVER, want_public_ip=True)
    op = _drive(op)
    assert op.state == "succeeded" and op.result["public_ip"]
    # one look: the create parks until the sim's build estimate, and the wait then finds it running; none more for
    # the address step
    assert sim_call_count(EP, "get_server") == 1
    assert sim_call_count(EP, "allocate_public_ip") == 1 and sim_call_count(EP, "attach_public_ip") == 1


def test_crash_after_provider_create_never_makes_a_second_server(account):
    sim_fault_add(EP, kind="crash", method="create_server", on_call=1)
    op = _start(account)
    with pytest.raises(SimulatedCrash):
        operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    # the process "died" after the cloud created the server, before the result was committed
    assert (op.state, op.step, op.lease_owner, op.result) == ("running", 0, "w1", {})
    assert len(_servers()) == 1
    # its lease is still live: nobody else runs it
    assert operation_run(op.pk, worker_id="w2") is None
    assert sim_call_count(EP, "list_servers") == 0
    # the lease expires; the next worker finds the server by its tags instead of creating another
    Operation.objects.all_tenants().filter(pk=op.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    op = _drive(op, worker="w2")
    assert op.state == "succeeded"
    assert len(_servers()) == 1
    assert op.result["server_id"] == _servers()[0].server_id
    assert sim_call_count(EP, "create_server") == 1


def test_crash_after_allocating_the_public_ip_never_allocates_a_second_one(account, settings):
    settings.SKYPORT_INSTALLATION_ID = "inst-test"
    sim_fault_add(EP, kind="crash", method="allocate_public_ip", on_call=1)
    op = _start(account, **SERVER, want_public_ip=True)
    operation_run(op.pk, worker_id="w1")  # creates, then parks while the server builds
    sim_advance(EP, 60)
    _make_due(op)
    with pytest.raises(SimulatedCrash):
        operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    # the cloud allocated the address (tagged at creation), the process died before the step was committed
    assert (op.state, op.steps[op.step], op.lease_owner) == ("running", "allocate_ip", "w1")
    assert "public_ip_id" not in op.result
    [leaked] = SimPublicIP.objects.filter(cloud__endpoint=EP)
    assert leaked.tags == {TAG_INSTALLATION: "inst-test", TAG_OPERATION: str(op.pk)} and leaked.server is None

    Operation.objects.all_tenants().filter(pk=op.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    op = _drive(op, worker="w2")
    assert op.state == "succeeded"
    [row] = SimPublicIP.objects.filter(cloud__endpoint=EP)  # exactly one address, the first one, now attached
    assert row.ip_id == leaked.ip_id == op.result["public_ip_id"] and not row.released
    assert row.server is not None and row.server.server_id == op.result["server_id"]
    assert sim_call_count(EP, "allocate_public_ip") == 1
    server = SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP).get_server(op.result["server_id"])
    assert server.public_ips == (row.address,) == (op.result["public_ip"],)


def test_public_ip_is_allocated_without_a_lookup_on_the_first_attempt(account):
    op = _drive(_start(account, **SERVER, want_public_ip=True))
    assert op.state == "succeeded" and op.result["public_ip_id"]
    assert sim_call_count(EP, "list_public_ips") == 0
    assert SimPublicIP.objects.filter(cloud__endpoint=EP).count() == 1


def test_two_workers_race_for_the_lease(account):
    op = _start(account)
    assert operation_claim(op.pk, worker_id="w1") is True
    assert operation_claim(op.pk, worker_id="w2") is False
    assert operation_run(op.pk, worker_id="w2") is None
    op.refresh_from_db()
    assert (op.lease_owner, op.attempt) == ("w1", 1)
    assert sim_call_count(EP) == 0


def test_run_inside_a_transaction_is_refused_before_any_call(account):
    op = _start(account)
    with transaction.atomic(), pytest.raises(OperationInTransactionError):
        operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    assert (op.state, op.attempt, op.lease_owner) == ("pending", 0, "")
    assert sim_call_count(EP) == 0 and _servers() == []


def test_transient_errors_back_off_then_succeed(account):
    sim_fault_add(EP, kind="throttle", method="create_server", times=2)
    op = _start(account)
    operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    assert (op.state, op.attempt, op.error_kind) == ("pending", 1, "transient")
    assert "throttled" in op.error
    first_delay = op.next_attempt_at - op.updated_at
    # not due yet: a worker leaves it alone
    assert operation_run(op.pk, worker_id="w1") is None
    _make_due(op)
    operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    assert (op.state, op.attempt) == ("pending", 2)
    assert op.next_attempt_at - op.updated_at > first_delay  # exponential backoff
    op = _drive(op)
    assert op.state == "succeeded" and op.attempt == 3 and op.error == ""
    assert len(_servers()) == 1


def test_permanent_error_fails_with_a_readable_message(account):
    sim_cloud_create(EP, api_key=KEY, regions=["r1"], quotas={"vcpus": 0}, frozen_clock=True)
    op = _start(account)
    operation_run(op.pk, worker_id="w1")
    op.refresh_from_db()
    assert (op.state, op.error_kind, op.attempt) == ("failed", "quota", 1)
    assert op.error.startswith("Quota exceeded for vcpus")
    assert op.finished_at and op.lease_owner == ""
    assert _servers() == []
    assert operation_run(op.pk, worker_id="w1") is None  # finished: nothing more to do


def test_retryable_error_gives_up_after_max_attempts(account):
    sim_fault_add(EP, kind="error", error="capacity", method="create_server", message="no room")
    op = operation_start(
        account=account, region="r1", kind="create_server", params=SERVER, idempotency_key="k-max", max_attempts=2
    )
    op = _drive(op)
    assert (op.state, op.attempt) == ("failed", 2)
    assert op.error == "Gave up after 2 attempts: no room"
    assert _servers() == []


def test_server_that_dies_while_building_fails_the_operation(account):
    sim_fault_add(EP, kind="die", method="create_server", seconds=5, message="host failed")
    op = _drive(_start(account))
    assert op.state == "failed" and "went into error: host failed" in op.error


def test_multi_step_resize_resumes_at_the_failed_step(account):
    driver = SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP)
    server = driver.create_server(CreateServer(name="db", image_id="debian-12", size_id="small"))
    sim_advance(EP, 60)
    sim_fault_add(EP, kind="error", error="transient", method="resize_server", on_call=1, message="resize hiccup")
    op = _start(account, kind="resize_server", key="k-resize", server_id=server.id, size_id="large")
    assert op.steps[:3] == ["resize:stop", "resize:wait_stop", "resize:resize"]
    for _ in range(10):  # stop, wait for stopped, then the resize call fails
        _make_due(op)
        operation_run(op.pk, worker_id="w1")
        op.refresh_from_db()
        if op.error:
            break
        sim_advance(EP, 10)
    assert (op.state, op.step, op.error) == ("pending", 2, "resize hiccup")
    op = _drive(op)
    assert op.state == "succeeded"
    assert sim_call_count(EP, "stop_server") == 1  # resumed at the resize, not from the start
    assert sim_call_count(EP, "resize_server") == 2
    got = driver.get_server(server.id)
    assert (got.state, got.size_id) == (ServerState.RUNNING, "large")


def test_delete_and_lifecycle_kinds(account):
    driver = SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP)
    server = driver.create_server(CreateServer(name="x", image_id="debian-12", size_id="small"))
    sim_advance(EP, 60)
    for n, (kind, state) in enumerate(
        [("stop_server", "stopped"), ("start_server", "running"), ("reboot_server", "running")]
    ):
        op = _drive(_start(account, kind=kind, key=f"k-{n}", server_id=server.id))
        assert (op.state, op.result["state"]) == ("succeeded", state)
    op = _drive(_start(account, kind="delete_server", key="k-del", server_id=server.id))
    assert op.state == "succeeded" and op.result["state"] == "deleted"
    assert driver.list_servers() == []


def test_periodic_resume_runs_due_operations(account):
    ops = [_start(account, key=f"k-r{n}", **{**SERVER, "name": f"app-{n}"}) for n in range(2)]
    assert operations_resume() == 2
    sim_advance(EP, 60)
    Operation.objects.all_tenants().update(next_attempt_at=None)
    assert operations_resume() == 2
    for op in ops:
        op.refresh_from_db()
        assert op.state == "succeeded"
    assert len(_servers()) == 2


@pytest.mark.postgres
@pytest.mark.django_db(databases=SIM_DATABASES, transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL for real concurrent workers")
def test_workers_racing_in_parallel_run_the_operation_once(account):
    op = _start(account)
    barrier = threading.Barrier(6)
    outcomes, lock = [], threading.Lock()

    def work(i):
        try:
            barrier.wait(timeout=10)
            ran = operation_run(op.pk, worker_id=f"w{i}") is not None
            with lock:
                outcomes.append(ran)
        finally:
            connections["default"].close()
            connections["sim"].close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == [False] * 5 + [True]
    assert sim_call_count(EP, "create_server") == 1 and len(_servers()) == 1


def test_enqueue_runs_after_the_commit(account, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        op = _start(account)
        operation_enqueue(op.pk)
        assert sim_call_count(EP) == 0  # nothing reaches the provider while the transaction is open
    assert len(callbacks) == 1
    op.refresh_from_db()
    assert (op.state, op.step) == ("pending", 1)  # created, now waiting for the server to run
    assert len(_servers()) == 1


def test_image_push_holds_a_lease_long_enough_for_an_upload(account, tmp_path):
    """A push moves a whole disk in one step: its lease outlasts the upload, so no second worker takes it over
    while the first is still sending; a server operation keeps the short lease."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    push = _start(account, kind="push_image", key="push-1", name="img", path=str(disk), disk_format="raw")
    server = _start(account, key="create-1")
    assert operation_claim(server.pk, worker_id="w1")
    before = timezone.now()
    calls = []
    original = SimDriver.image_step

    def watch(self, step, upload, state):
        row = Operation.objects.all_tenants().get(pk=push.pk)
        calls.append((row.lease_expires_at - before).total_seconds())
        return original(self, step, upload, state)

    SimDriver.image_step = watch
    try:
        op = operation_run(push.pk, worker_id="w2")
    finally:
        SimDriver.image_step = original
    assert op.state == Operation.State.SUCCEEDED and op.result["image_id"]
    assert calls and calls[0] > 3600
    short = Operation.objects.all_tenants().get(pk=server.pk)
    assert (short.lease_expires_at - before).total_seconds() <= 300


def _as_stored(op):
    fresh = Operation.objects.all_tenants().get(pk=op.pk)
    return {f.attname: getattr(fresh, f.attname) for f in Operation._meta.concrete_fields}


def _as_answered(op):
    return {f.attname: getattr(op, f.attname) for f in Operation._meta.concrete_fields}


def test_a_run_answers_with_the_operation_as_stored_without_reading_it_back(account):
    """A run that parks or succeeds answers with the object it changed (no second read): every field equals what a
    fresh read of the row gives, the attempt given back by a park included."""
    from django.test.utils import CaptureQueriesContext

    op = _start(account, want_public_ip=True, **SERVER)
    with CaptureQueriesContext(connection) as ctx:
        parked = operation_run(op.pk, worker_id="w1")
    last = [q["sql"] for q in ctx.captured_queries if "clouds_operation" in q["sql"]][-1]
    assert last.startswith("UPDATE"), last  # the release is the run's last word on the row
    assert parked.state == Operation.State.PENDING and parked.next_attempt_at is not None
    assert parked.attempt == 0  # waiting is not an attempt
    assert _as_answered(parked) == _as_stored(op)
    for _ in range(30):
        sim_advance(EP, 10)
        _make_due(op)
        answered = operation_run(op.pk, worker_id="w1")
        assert answered is not None and _as_answered(answered) == _as_stored(op)
        if answered.state == Operation.State.SUCCEEDED:
            break
    assert answered.state == Operation.State.SUCCEEDED and answered.result["public_ip"]
    assert answered.lease_owner == "" and answered.finished_at is not None
