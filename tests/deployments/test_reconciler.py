"""The reconciler against the simulated cloud (frozen clock): one list per account-region, leases, observations that
lose to newer local transitions, drift, misses, crash recovery by tags, stuck timeouts, unmanaged servers and their
adoption, the adaptive schedule, and on-demand resyncs."""

from __future__ import annotations

import datetime
import threading

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, connections, transaction
from django.http import Http404
from django.utils import timezone

from apps.clouds import services as cloud_services
from apps.clouds.drivers.base import CreateServer
from apps.clouds.drivers.sim import SimDriver, SimulatedCrash
from apps.clouds.models import CloudAccount, Flavor, Health, Operation
from apps.clouds.operations import TAG_INSTALLATION, TAG_OPERATION, operation_run, operation_start
from apps.clouds.sim.models import SimServer
from apps.clouds.sim.services import (
    sim_advance,
    sim_call_count,
    sim_cloud_create,
    sim_fault_add,
    sim_server_kill,
)
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from apps.deployments.models import (
    Deployment,
    Instance,
    InstanceTransition,
    SweepState,
    UnmanagedServer,
)
from apps.deployments.presence import watch_touch, watched
from apps.deployments.reconciler import (
    ReconcilerInTransactionError,
    deployment_resync,
    instance_resync,
    instances_needing_attention,
    reconcile_due,
    sweep,
    sweep_claim,
    sweep_state,
    unmanaged_adopt,
)
from apps.deployments.reconciler_tasks import reconcile_tick
from apps.deployments.states import DeploymentState, InstanceState
from tests.clouds.fixtures_sim import SIM_DATABASES, _close_sim_connection  # noqa: F401  (PostgreSQL teardown)

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

S, D = InstanceState, DeploymentState
Cause = InstanceTransition.Cause
EP = "sim://reconciler"
KEY = "sim-reconciler-key-0001"
INSTALLATION = "inst-reconciler"


@pytest.fixture(autouse=True)
def _installation(settings):
    settings.SKYPORT_INSTALLATION_ID = INSTALLATION


@pytest.fixture
def account(acme):
    sim_cloud_create(EP, api_key=KEY, seed=11, regions=["r1", "r2"], frozen_clock=True)
    acct = CloudAccount(organization=acme, name="Reconciler sim", slug="reconciler-sim", kind="sim", endpoint=EP,
                        regions=["r1", "r2"], default_region="r1", health=Health.OK)
    acct.set_credentials({"api_key": KEY}, secret_field="api_key")
    acct.save()
    return acct


@pytest.fixture
def driver(account):
    return SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP)


@pytest.fixture
def deployment(acme, web, connor):
    return Deployment.objects.create(organization=acme, project=web, owner=connor, name="app", state=D.PROVISIONING)


def make_instance(deployment, account, *, index=1, state=S.RUNNING, server_id="", region="r1", operation=None,
                  private_ips=None):
    return Instance.objects.create(
        organization=deployment.organization, project=deployment.project, deployment=deployment,
        owner=deployment.owner, name=f"{deployment.name}-web-{index}", role="web", index=index, account=account,
        region=region, size="small", flavor_id="small", vcpus=1, ram_mb=2048, disk_gb=20, state=state,
        provider_server_id=server_id, operation=operation, private_ips=private_ips or [],
    )


def make_server(driver, name="web", **tags):
    return driver.create_server(CreateServer(name=name, image_id="debian-12", size_id="small", tags=tags))


def running_server(driver, name="web", **tags):
    server = make_server(driver, name, **tags)
    sim_advance(EP, 60)
    return server


def fresh(instance):
    return Instance.objects.all_tenants().get(pk=instance.pk)


def transitions(instance):
    return list(InstanceTransition.objects.all_tenants().filter(instance=instance).order_by("detected_at", "pk")
                .values_list("from_state", "to_state", "cause", "message"))


def state_of(account, region="r1"):
    return SweepState.objects.get(account=account, region=region)


def interval(account, region="r1"):
    row = state_of(account, region)
    return (row.next_sweep_at - row.last_finished_at).total_seconds()


def run_sweep(account, region="r1", worker="w1"):
    result = sweep(account, region, worker_id=worker)
    assert result is not None and result.ok, result
    return result


# --- one call, one worker ------------------------------------------------------------------------------------------


def test_one_list_call_per_account_region_whatever_the_number_of_instances(account, driver, deployment):
    r1 = [make_instance(deployment, account, index=n, server_id=running_server(driver, f"web-{n}").id)
          for n in range(1, 7)]
    other = SimDriver(credentials={"api_key": KEY}, region="r2", endpoint=EP)
    r2 = [make_instance(deployment, account, index=10 + n, region="r2", server_id=running_server(other).id)
          for n in range(2)]
    calls_before = sim_call_count(EP)

    result = run_sweep(account, "r1")
    assert (result.servers_seen, result.synced, result.transitions) == (6, 6, 0)
    assert sim_call_count(EP, "list_servers") == 1
    assert sim_call_count(EP) - calls_before == 1  # nothing else: no per-instance look-up
    assert all(fresh(i).last_synced_at is not None for i in r1)
    assert all(fresh(i).last_synced_at is None for i in r2)  # another region: not this sweep's business

    run_sweep(account, "r2")
    assert sim_call_count(EP, "list_servers") == 2 and sim_call_count(EP, "get_server") == 0
    assert all(fresh(i).last_synced_at is not None for i in r2)


def test_two_workers_cannot_sweep_the_same_account_region(account, driver, deployment, monkeypatch):
    make_instance(deployment, account, server_id=running_server(driver).id)
    original = SimDriver.list_servers
    second = []

    def list_while_another_worker_tries(self, *, tags=None):
        second.append(sweep(account, "r1", worker_id="w2"))
        return original(self, tags=tags)

    monkeypatch.setattr(SimDriver, "list_servers", list_while_another_worker_tries)
    assert sweep(account, "r1", worker_id="w1") is not None
    assert second == [None]  # w2 met w1's lease
    assert sim_call_count(EP, "list_servers") == 1
    row = state_of(account)
    assert (row.lease_owner, row.lease_expires_at) == ("", None)  # released at the end
    monkeypatch.setattr(SimDriver, "list_servers", original)
    assert sweep(account, "r1", worker_id="w2") is not None


@pytest.mark.postgres
@pytest.mark.django_db(databases=SIM_DATABASES, transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL for real concurrent workers")
def test_workers_racing_in_parallel_sweep_once(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    sweep_state(account.pk, "r1")
    barrier = threading.Barrier(6)
    outcomes, lock = [], threading.Lock()

    def work(i):
        try:
            barrier.wait(timeout=10)
            swept = sweep(account, "r1", worker_id=f"w{i}") is not None
            with lock:
                outcomes.append(swept)
        finally:
            connections["default"].close()
            connections["sim"].close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == [False] * 5 + [True]
    assert sim_call_count(EP, "list_servers") == 1


def test_a_lease_left_by_a_dead_worker_expires(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    row = sweep_state(account.pk, "r1")
    assert sweep_claim(row.pk, worker_id="dead", now=timezone.now())
    assert sweep(account, "r1", worker_id="w1") is None
    assert sim_call_count(EP, "list_servers") == 0
    SweepState.objects.filter(pk=row.pk).update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert sweep(account, "r1", worker_id="w1") is not None


def test_a_sweep_refuses_to_run_inside_a_transaction(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    with transaction.atomic(), pytest.raises(ReconcilerInTransactionError):
        sweep(account, "r1", worker_id="w1")
    assert sim_call_count(EP, "list_servers") == 0
    assert not SweepState.objects.filter(lease_owner="w1").exists()


# --- observations --------------------------------------------------------------------------------------------------


def test_an_observation_older_than_the_last_local_transition_is_ignored(account, driver, deployment, monkeypatch):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    original = SimDriver.list_servers

    def list_then_user_stops(self, *, tags=None):
        listed = original(self, tags=tags)  # says "running"
        # meanwhile a person stops the server through Skyport
        from apps.deployments.transitions import transition

        driver.stop_server(server.id)
        transition(fresh(instance), to=S.STOPPING, cause=Cause.USER)
        return listed

    monkeypatch.setattr(SimDriver, "list_servers", list_then_user_stops)
    result = run_sweep(account)
    assert (result.stale, result.transitions) == (1, 0)
    assert fresh(instance).state == S.STOPPING  # not overwritten with the older "running"
    assert transitions(instance) == [(S.RUNNING, S.STOPPING, Cause.USER, "")]

    monkeypatch.setattr(SimDriver, "list_servers", original)
    sim_advance(EP, 30)
    run_sweep(account)  # a list started after the local change applies
    assert fresh(instance).state == S.STOPPED
    assert transitions(instance)[-1] == (S.STOPPING, S.STOPPED, Cause.PROVIDER, "")


def test_building_to_running_is_observed_with_addresses(account, driver, deployment):
    server = make_server(driver)
    instance = make_instance(deployment, account, state=S.BUILDING, server_id=server.id)
    run_sweep(account)
    assert fresh(instance).state == S.BUILDING and transitions(instance) == []
    sim_advance(EP, 60)
    result = run_sweep(account)
    got = fresh(instance)
    assert result.transitions == 1
    assert (got.state, got.missed_syncs) == (S.RUNNING, 0)
    assert got.private_ips == list(driver.get_server(server.id).private_ips) and got.private_ips
    assert transitions(instance) == [(S.BUILDING, S.RUNNING, Cause.PROVIDER, "")]
    deployment.refresh_from_db()
    assert deployment.state == D.ACTIVE


def test_stop_and_start_outside_skyport_are_drift(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    driver.stop_server(server.id)
    sim_advance(EP, 30)
    run_sweep(account)
    assert fresh(instance).state == S.STOPPED
    driver.start_server(server.id)
    sim_advance(EP, 30)
    run_sweep(account)
    assert fresh(instance).state == S.RUNNING
    assert transitions(instance) == [
        (S.RUNNING, S.STOPPED, Cause.DRIFT, "stopped outside Skyport"),
        (S.STOPPED, S.RUNNING, Cause.DRIFT, "started outside Skyport"),
    ]


def test_a_killed_server_goes_to_error_with_the_providers_fault(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    sim_server_kill(EP, server.id, reason="hypervisor lost power")
    run_sweep(account)
    got = fresh(instance)
    assert (got.state, got.error) == (S.ERROR, "hypervisor lost power")
    assert transitions(instance) == [(S.RUNNING, S.ERROR, Cause.DRIFT, "hypervisor lost power")]
    deployment.refresh_from_db()
    assert deployment.state == D.PARTIALLY_FAILED


def test_a_server_missing_once_is_kept_and_deleted_after_a_second_miss_and_a_look_up(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    driver.delete_server(server.id)
    sim_advance(EP, 30)
    deletes = sim_call_count(EP, "delete_server")

    result = run_sweep(account)
    got = fresh(instance)
    assert (result.missing, got.state, got.missed_syncs) == (1, S.RUNNING, 1)
    assert sim_call_count(EP, "get_server") == 0 and transitions(instance) == []

    result = run_sweep(account)
    got = fresh(instance)
    assert (result.missing, result.deleted) == (1, 1)
    assert sim_call_count(EP, "get_server") == 1  # the second miss asks directly
    assert (got.state, got.missed_syncs) == (S.DELETED, 0)
    assert transitions(instance) == [(S.RUNNING, S.DELETED, Cause.DRIFT, "deleted outside Skyport")]
    assert sim_call_count(EP, "delete_server") == deletes  # the reconciler deleted nothing itself


def test_a_server_the_provider_does_not_know_is_deleted_after_the_second_miss(account, deployment):
    instance = make_instance(deployment, account, server_id="srv-never-existed")
    run_sweep(account)
    assert fresh(instance).state == S.RUNNING
    run_sweep(account)
    assert fresh(instance).state == S.DELETED
    assert transitions(instance)[-1][2:] == (Cause.DRIFT, "deleted outside Skyport")


def test_instances_of_a_live_operation_are_left_to_it(account, driver, deployment):
    server = running_server(driver)
    op = operation_start(account=account, region="r1", kind="stop_server", params={"server_id": server.id},
                         idempotency_key="stop-1")
    instance = make_instance(deployment, account, state=S.STOPPING, server_id=server.id, operation=op)
    run_sweep(account)  # the provider still says running; the pending operation owns the instance
    got = fresh(instance)
    assert got.state == S.STOPPING and got.last_synced_at is not None and transitions(instance) == []


# --- crash recovery ------------------------------------------------------------------------------------------------


def _expire(op):
    Operation.objects.all_tenants().filter(pk=op.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )


def test_a_server_created_by_a_worker_that_died_is_adopted_by_its_tags_and_never_created_twice(
    account, deployment
):
    sim_fault_add(EP, kind="crash", method="create_server", on_call=1)
    op = operation_start(account=account, region="r1", kind="create_server", idempotency_key="create-1",
                         params={"name": "app-web-1", "image_id": "debian-12", "size_id": "small"})
    instance = make_instance(deployment, account, state=S.BUILDING, operation=op)
    with pytest.raises(SimulatedCrash):
        operation_run(op.pk, worker_id="dead")
    [created] = SimServer.objects.filter(cloud__endpoint=EP)
    assert created.tags[TAG_OPERATION] == str(op.pk)

    # the dead worker's lease is still live: its create is in flight, neither adopted nor unmanaged
    run_sweep(account)
    assert fresh(instance).provider_server_id == ""
    assert not UnmanagedServer.objects.all_tenants().exists()

    _expire(op)
    result = run_sweep(account)
    assert result.adopted == 1
    assert fresh(instance).provider_server_id == created.server_id
    assert not UnmanagedServer.objects.all_tenants().exists()

    # the operation resumes and finds the same server by its tags
    for _ in range(10):
        Operation.objects.all_tenants().filter(pk=op.pk).update(next_attempt_at=None)
        operation_run(op.pk, worker_id="w2")
        op.refresh_from_db()
        if op.state == Operation.State.SUCCEEDED:
            break
        sim_advance(EP, 10)
    assert op.state == Operation.State.SUCCEEDED and op.result["server_id"] == created.server_id
    assert sim_call_count(EP, "create_server") == 1
    assert SimServer.objects.filter(cloud__endpoint=EP).count() == 1
    run_sweep(account)
    assert fresh(instance).state == S.RUNNING


def test_a_failed_create_with_no_server_adopts_nothing(account, deployment):
    op = operation_start(account=account, region="r1", kind="create_server", idempotency_key="create-2",
                         params={"name": "app-web-1", "image_id": "debian-12", "size_id": "small"})
    Operation.objects.all_tenants().filter(pk=op.pk).update(state=Operation.State.FAILED, error="quota")
    instance = make_instance(deployment, account, state=S.BUILDING, operation=op)
    other = running_server(SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP), "unrelated",
                           **{TAG_INSTALLATION: INSTALLATION, TAG_OPERATION: "424242"})
    result = run_sweep(account)
    assert result.adopted == 0 and fresh(instance).provider_server_id == ""
    assert list(UnmanagedServer.objects.all_tenants().values_list("provider_server_id", flat=True)) == [other.id]


# --- stuck ---------------------------------------------------------------------------------------------------------


def _age(instance, minutes):
    past = timezone.now() - datetime.timedelta(minutes=minutes)
    Instance.objects.all_tenants().filter(pk=instance.pk).update(state_changed_at=past, last_transition_at=past)


def test_a_stuck_transition_ends_in_error_after_the_timeout(account, driver, deployment):
    sim_fault_add(EP, kind="stuck", method="create_server", on_call=1)
    server = make_server(driver)
    instance = make_instance(deployment, account, state=S.BUILDING, server_id=server.id)
    _age(instance, 29)
    run_sweep(account)
    assert fresh(instance).state == S.BUILDING
    _age(instance, 31)
    result = run_sweep(account)
    got = fresh(instance)
    assert result.stuck == 1
    assert (got.state, got.error) == (S.ERROR, "Stuck in building for 31 minutes")
    assert transitions(instance) == [(S.BUILDING, S.ERROR, Cause.TIMEOUT, "Stuck in building for 31 minutes")]
    # the provider still shows the same stuck build: the error stands, nothing flaps
    sim_advance(EP, 600)
    run_sweep(account)
    assert fresh(instance).state == S.ERROR and len(transitions(instance)) == 1


def test_a_transition_with_a_live_operation_is_not_timed_out(account, driver, deployment, settings):
    settings.SKYPORT_STUCK_SECONDS = 60
    sim_fault_add(EP, kind="stuck", method="create_server", on_call=1)
    server = make_server(driver)
    op = operation_start(account=account, region="r1", kind="create_server", idempotency_key="create-3",
                         params={"name": "x", "image_id": "debian-12", "size_id": "small"})
    instance = make_instance(deployment, account, state=S.BUILDING, server_id=server.id, operation=op)
    _age(instance, 5)
    run_sweep(account)
    assert fresh(instance).state == S.BUILDING
    Operation.objects.all_tenants().filter(pk=op.pk).update(state=Operation.State.FAILED)
    run_sweep(account)
    assert (fresh(instance).state, fresh(instance).error) == (S.ERROR, "Stuck in building for 5 minutes")


# --- unmanaged servers ---------------------------------------------------------------------------------------------


def test_unmanaged_servers_are_listed_never_deleted_and_forgotten_once_gone(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver, "ours").id)
    legacy = running_server(driver, "legacy-db")
    orphan = running_server(driver, "orphan", **{TAG_INSTALLATION: INSTALLATION, TAG_OPERATION: "999"})
    other_install = running_server(driver, "theirs", **{TAG_INSTALLATION: "someone-else", TAG_OPERATION: "1"})
    result = run_sweep(account)
    assert result.unmanaged == 3
    rows = {r.provider_server_id: r for r in UnmanagedServer.objects.all_tenants()}
    assert set(rows) == {legacy.id, orphan.id, other_install.id}
    row = rows[legacy.id]
    assert (row.name, row.state, row.size_id, row.region, row.organization_id) == (
        "legacy-db", "running", "small", "r1", account.organization_id)
    assert row.private_ips and row.first_seen_at == row.last_seen_at

    run_sweep(account)
    again = UnmanagedServer.objects.all_tenants().get(provider_server_id=legacy.id)
    assert again.first_seen_at == row.first_seen_at and again.last_seen_at > row.last_seen_at
    assert sim_call_count(EP, "delete_server") == 0  # never deleted at the provider
    assert driver.get_server(legacy.id).state == "running"

    driver.delete_server(orphan.id)  # someone removes it in the provider's console
    sim_advance(EP, 30)
    run_sweep(account)
    assert set(UnmanagedServer.objects.all_tenants().values_list("provider_server_id", flat=True)) == {
        legacy.id, other_install.id}


@pytest.fixture
def legacy(account, driver, deployment):
    cloud_services.sync_account(account=account)  # flavors to size adopted servers from
    make_instance(deployment, account, server_id=running_server(driver, "ours").id)
    server = running_server(driver, "legacy-db")
    run_sweep(account)
    return UnmanagedServer.objects.all_tenants().get(provider_server_id=server.id)


def test_an_admin_adopts_an_unmanaged_server(legacy, account, sam, web):
    created = unmanaged_adopt(actor=sam, server=legacy, project=web, name="Legacy DB")
    assert (created.placement, created.catalog_item, created.blueprint_version) == ({"adopted": True}, None, None)
    assert (created.owner, created.project, created.state) == (sam, web, D.ACTIVE)
    [instance] = Instance.objects.all_tenants().filter(deployment=created)
    assert (instance.state, instance.provider_server_id, instance.size, instance.flavor_id) == (
        S.RUNNING, legacy.provider_server_id, "small", "small")
    assert (instance.vcpus, instance.ram_mb, instance.account_id, instance.region) == (1, 2048, account.pk, "r1")
    assert instance.private_ips == legacy.private_ips
    assert [t[:3] for t in transitions(instance)] == [(S.PENDING, S.BUILDING, Cause.PROVIDER),
                                                      (S.BUILDING, S.RUNNING, Cause.PROVIDER)]
    assert {t[3] for t in transitions(instance)} == {"adopted"}
    assert not UnmanagedServer.objects.all_tenants().exists()
    assert AuditEvent.objects.all_tenants().filter(verb="unmanaged_server.adopt", actor=sam).count() == 1
    # tracked from now on: the next sweep neither lists it again nor changes it
    run_sweep(account)
    assert not UnmanagedServer.objects.all_tenants().exists()
    assert fresh(instance).state == S.RUNNING and fresh(instance).last_synced_at is not None


def test_a_stopped_server_is_adopted_stopped(legacy, account, driver, sam, web):
    driver.stop_server(legacy.provider_server_id)
    sim_advance(EP, 30)
    created = unmanaged_adopt(actor=sam, server=legacy, project=web, name="cold")
    assert created.instances.get().state == S.STOPPED


def test_only_org_admins_adopt_and_others_change_nothing(legacy, connor, marty, mallory, web, ops):
    with pytest.raises(Http404):
        unmanaged_adopt(actor=mallory, server=legacy, project=ops, name="mine")
    with pytest.raises(Http404):  # a member does not even see cloud accounts' servers
        unmanaged_adopt(actor=connor, server=legacy, project=web, name="mine")
    with pytest.raises(PermissionDenied):  # a manager sees it but may not adopt
        unmanaged_adopt(actor=marty, server=legacy, project=web, name="mine")
    assert UnmanagedServer.objects.all_tenants().filter(pk=legacy.pk).exists()
    assert not Deployment.objects.all_tenants().filter(name="mine").exists()


def test_adopt_refuses_a_project_of_another_organisation_and_a_size_never_synced(legacy, sam, ops, web, account):
    with pytest.raises(ServiceError, match="another organisation"):
        unmanaged_adopt(actor=sam, server=legacy, project=ops, name="x")
    Flavor.objects.all_tenants().filter(account=account).delete()
    with pytest.raises(ServiceError, match="Sync now"):
        unmanaged_adopt(actor=sam, server=legacy, project=web, name="x")
    assert UnmanagedServer.objects.all_tenants().filter(pk=legacy.pk).exists()
    assert not Deployment.objects.all_tenants().filter(name="x").exists()


# --- the schedule --------------------------------------------------------------------------------------------------


def test_fast_while_transitional_or_watched_slow_otherwise(account, driver, deployment):
    server = make_server(driver)
    instance = make_instance(deployment, account, state=S.BUILDING, server_id=server.id)
    run_sweep(account)
    assert interval(account) == 5
    sim_advance(EP, 60)
    run_sweep(account)
    assert fresh(instance).state == S.RUNNING
    assert interval(account) == 300
    watch_touch(deployment.pk)
    assert watched([deployment.pk, deployment.pk + 1000]) == {deployment.pk}
    run_sweep(account)
    assert interval(account) == 5


def test_a_watched_deployment_that_did_not_change_gets_a_sync_event(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    sequence = deployment.sequence
    run_sweep(account)
    deployment.refresh_from_db()
    assert deployment.sequence == sequence  # nobody watches: no event
    watch_touch(deployment.pk)
    run_sweep(account)
    deployment.refresh_from_db()
    assert deployment.sequence == sequence + 1


def test_throttling_backs_off_doubling_up_to_the_slow_interval(account, driver, deployment, settings):
    settings.SKYPORT_SWEEP_SLOW_SECONDS = 30
    instance = make_instance(deployment, account, server_id=running_server(driver).id)
    sim_fault_add(EP, kind="throttle", method="list_servers", times=4)
    delays = []
    for _ in range(4):
        result = sweep(account, "r1", worker_id="w1")
        assert result is not None and not result.ok and "throttled" in result.error
        delays.append(interval(account))
    assert delays == [10, 20, 30, 30]
    row = state_of(account)
    assert row.failures == 4 and "throttled" in row.last_error and row.lease_owner == ""
    account.refresh_from_db()
    assert account.health == Health.DEGRADED and "throttled" in account.health_message
    assert fresh(instance).last_synced_at is None  # nothing was concluded from a failed list

    run_sweep(account)
    row = state_of(account)
    account.refresh_from_db()
    assert (row.failures, row.last_error) == (0, "")
    assert (account.health, account.health_message) == (Health.OK, "")


def test_one_throttled_sweep_does_not_degrade_the_account(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    sim_fault_add(EP, kind="throttle", method="list_servers", times=1)
    sweep(account, "r1", worker_id="w1")
    account.refresh_from_db()
    assert account.health == Health.OK and account.last_failure_at is not None


def test_rejected_credentials_mark_the_account_failing_at_once(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    sim_fault_add(EP, kind="auth", method="list_servers", times=1, message="key expired")
    result = sweep(account, "r1", worker_id="w1")
    assert result is not None and not result.ok
    account.refresh_from_db()
    assert account.health == Health.FAILING and "key expired" in account.health_message
    assert KEY not in account.health_message


def test_reconcile_due_sweeps_what_is_due_once(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    assert not SweepState.objects.exists()
    # r1 has the instance; r2 (no instance) is swept too, for servers Skyport does not manage
    assert reconcile_due(worker_id="w1") == 2
    assert set(SweepState.objects.filter(account=account).values_list("region", flat=True)) == {"r1", "r2"}
    assert reconcile_due(worker_id="w1") == 0  # next due in the slow interval
    assert sim_call_count(EP, "list_servers") == 2
    later = timezone.now() + datetime.timedelta(seconds=301)
    assert reconcile_due(worker_id="w1", now=later) == 2
    assert sim_call_count(EP, "list_servers") == 4


def test_reconcile_tick_runs_as_a_task(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    assert reconcile_tick.apply().get() == 2  # one list per region of the account
    assert sim_call_count(EP, "list_servers") == 2


# --- on demand -----------------------------------------------------------------------------------------------------


def test_instance_resync_asks_the_provider_directly_and_brings_the_sweep_forward(account, driver, deployment,
                                                                                   connor, vera):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    sweep_state(account.pk, "r1")
    SweepState.objects.filter(account=account).update(next_sweep_at=timezone.now() + datetime.timedelta(hours=1))
    driver.stop_server(server.id)
    sim_advance(EP, 30)
    got = instance_resync(actor=vera, instance=instance)  # a viewer may ask
    assert got.state == S.STOPPED
    assert (sim_call_count(EP, "get_server"), sim_call_count(EP, "list_servers")) == (1, 0)
    assert state_of(account).next_sweep_at <= timezone.now()
    assert AuditEvent.objects.all_tenants().filter(verb="instance.resync", actor=vera).count() == 1


def test_resync_of_what_the_actor_cannot_see_is_a_404_and_asks_nothing(account, driver, deployment, mallory):
    instance = make_instance(deployment, account, server_id=running_server(driver).id)
    calls = sim_call_count(EP)
    with pytest.raises(Http404):
        instance_resync(actor=mallory, instance=instance)
    with pytest.raises(Http404):
        deployment_resync(actor=mallory, deployment=deployment)
    assert sim_call_count(EP) == calls
    assert fresh(instance).last_synced_at is None


def test_deployment_resync_looks_up_each_instance(account, driver, deployment, connor):
    a = make_instance(deployment, account, index=1, server_id=running_server(driver, "a").id)
    b_server = running_server(driver, "b")
    b = make_instance(deployment, account, index=2, server_id=b_server.id)
    sim_server_kill(EP, b_server.id, reason="disk failure")
    deployment_resync(actor=connor, deployment=deployment)
    assert sim_call_count(EP, "get_server") == 2
    assert (fresh(a).state, fresh(b).state, fresh(b).error) == (S.RUNNING, S.ERROR, "disk failure")


# --- attention -----------------------------------------------------------------------------------------------------


def test_instances_needing_attention(account, deployment, acme, django_assert_num_queries):
    ok = make_instance(deployment, account, index=1, private_ips=["10.0.0.1"])
    no_address = make_instance(deployment, account, index=2)
    errored = make_instance(deployment, account, index=3, state=S.ERROR)
    stuck = make_instance(deployment, account, index=4, state=S.BUILDING)
    young = make_instance(deployment, account, index=5, state=S.BUILDING)
    _age(stuck, 45)
    _age(young, 5)
    with django_assert_num_queries(1):
        rows = [(i.pk, i.attention, i.deployment.name, i.account.name, i.owner.username)
                for i in instances_needing_attention(acme)]
    assert {(pk, why) for pk, why, *_ in rows} == {(no_address.pk, "no_address"), (errored.pk, "error"),
                                                    (stuck.pk, "stuck")}
    assert ok.pk not in {pk for pk, *_ in rows} and young.pk not in {pk for pk, *_ in rows}
    for n in range(6, 12):
        make_instance(deployment, account, index=n, state=S.ERROR)
    with django_assert_num_queries(1):
        assert len([i.deployment.name for i in instances_needing_attention(acme)]) == 9


def test_a_quiet_sweep_costs_the_same_queries_whatever_the_number_of_instances(account, driver, deployment):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for(count, start):
        for n in range(start, start + count):
            make_instance(deployment, account, index=n, server_id=running_server(driver, f"w{n}").id,
                          private_ips=["placeholder"])
        run_sweep(account)  # the first sweep fills in the addresses
        with CaptureQueriesContext(connection) as ctx:
            run_sweep(account)
        return len(ctx.captured_queries)

    few = queries_for(2, 1)
    many = queries_for(10, 3)
    assert few == many, (few, many)
