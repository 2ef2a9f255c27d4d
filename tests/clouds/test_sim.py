"""The simulated cloud: states over its stored clock, limits, faults, determinism, and its own connection."""

from __future__ import annotations

import datetime

import pytest
from django.db import connections, transaction

from apps.accounts.models import Organization
from apps.clouds.drivers import build_driver
from apps.clouds.drivers.base import (
    AuthError,
    CapacityError,
    CreateServer,
    InvalidRequestError,
    NotFoundError,
    QuotaError,
    ServerState,
    TransientError,
)
from apps.clouds.drivers.sim import SimDriver
from apps.clouds.sim.models import SimCloud, SimServer
from apps.clouds.sim.services import (
    FROZEN_EPOCH,
    sim_advance,
    sim_call_count,
    sim_cloud,
    sim_cloud_create,
    sim_fault_add,
    sim_server_kill,
)
from tests.clouds.fixtures_sim import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

EP = "sim://unit"
KEY = "sim-unit-key-0001"


@pytest.fixture
def cloud():
    return sim_cloud_create(EP, api_key=KEY, seed=42, regions=["r1", "r2"], frozen_clock=True)


def _driver(region="r1", key=KEY, endpoint=EP):
    return SimDriver(credentials={"api_key": key}, region=region, endpoint=endpoint)


def _create(d, name="web-1", size="small", **kw):
    return d.create_server(CreateServer(name=name, image_id="ubuntu-24.04", size_id=size, **kw))


class _Rollback(Exception):
    pass


@pytest.mark.django_db(databases=SIM_DATABASES, transaction=True)
def test_sim_writes_survive_a_rolled_back_transaction(cloud, personas):
    before = Organization.objects.all_tenants().count()
    with pytest.raises(_Rollback), transaction.atomic():
        Organization.objects.create(name="Doomed", slug="doomed")
        server = _create(_driver())
        raise _Rollback
    # Skyport's write rolled back, the cloud's did not: like a real provider
    assert Organization.objects.all_tenants().count() == before
    assert SimServer.objects.filter(server_id=server.id).count() == 1
    assert _driver().get_server(server.id).state == ServerState.BUILDING


def test_sim_models_live_on_the_sim_connection(cloud):
    assert SimServer.objects.db == "sim" and SimCloud.objects.db == "sim"
    assert connections["sim"] is not connections["default"]


def test_states_follow_the_stored_clock(cloud):
    d = _driver()
    server = _create(d)
    assert server.state == ServerState.BUILDING and server.created_at == FROZEN_EPOCH
    sim_advance(EP, 29)
    assert d.get_server(server.id).state == ServerState.BUILDING
    sim_advance(EP, 1)
    assert d.get_server(server.id).state == ServerState.RUNNING
    d.stop_server(server.id)
    assert d.get_server(server.id).state == ServerState.STOPPING
    sim_advance(EP, 10)
    assert d.get_server(server.id).state == ServerState.STOPPED
    d.start_server(server.id)
    assert d.get_server(server.id).state == ServerState.STARTING
    sim_advance(EP, 15)
    d.reboot_server(server.id)
    assert d.get_server(server.id).state == ServerState.REBOOTING
    sim_advance(EP, 20)
    d.resize_server(server.id, "large")
    assert d.get_server(server.id).state == ServerState.RESIZING
    sim_advance(EP, 40)
    got = d.get_server(server.id)
    assert (got.state, got.size_id) == (ServerState.RUNNING, "large")
    d.delete_server(server.id)
    assert d.get_server(server.id).state == ServerState.DELETING
    sim_advance(EP, 10)
    assert d.get_server(server.id).state == ServerState.DELETED
    assert d.list_servers() == []
    with pytest.raises(NotFoundError):
        d.stop_server(server.id)


def test_durations_are_configurable_and_wrong_state_is_refused(cloud):
    sim_cloud_create(EP, api_key=KEY, regions=["r1"], durations={"build": 300}, frozen_clock=True)
    d = _driver()
    server = _create(d)
    sim_advance(EP, 299)
    assert d.get_server(server.id).state == ServerState.BUILDING
    with pytest.raises(TransientError, match="while it is building"):
        d.stop_server(server.id)
    with pytest.raises(InvalidRequestError):
        d.reboot_server(server.id)
    sim_advance(EP, 1)
    assert d.get_server(server.id).state == ServerState.RUNNING


def test_idempotency_token_returns_the_same_server(cloud):
    d = _driver()
    first = _create(d, idempotency_token="tok-1")
    again = _create(d, name="other", idempotency_token="tok-1")
    assert again.id == first.id
    assert SimServer.objects.filter(cloud__endpoint=EP).count() == 1
    assert _create(d, idempotency_token="tok-2").id != first.id


def test_tags_filter_list_and_regions_are_separate(cloud):
    d = _driver()
    a = _create(d, tags={"team": "a"})
    _create(d, tags={"team": "b"})
    _create(_driver("r2"), tags={"team": "a"})
    assert [s.id for s in d.list_servers(tags={"team": "a"})] == [a.id]
    assert len(d.list_servers()) == 2
    with pytest.raises(NotFoundError):
        _driver("r2").get_server(a.id)


def test_quota_and_capacity(cloud):
    sim_cloud_create(EP, api_key=KEY, regions=["r1"], quotas={"instances": 2}, capacity={"r1": 5}, frozen_clock=True)
    d = _driver()
    _create(d, size="large")  # 4 vCPUs
    with pytest.raises(CapacityError, match="no capacity"):
        _create(d, size="medium")  # 6 > 5 in r1
    _create(d, size="small")
    with pytest.raises(QuotaError, match="instances: 2 of 2"):
        _create(d, size="small")
    assert SimServer.objects.filter(cloud__endpoint=EP).count() == 2


def test_credentials_region_and_endpoint_errors(cloud):
    _driver().validate_credentials()
    with pytest.raises(AuthError, match="rejected the API key"):
        _driver(key="wrong").validate_credentials()
    with pytest.raises(AuthError):
        _create(_driver(key="wrong"))
    with pytest.raises(InvalidRequestError, match="Region 'nowhere'"):
        _driver("nowhere").list_sizes()
    with pytest.raises(InvalidRequestError, match="No simulated cloud"):
        _driver(endpoint="sim://missing").validate_credentials()
    assert SimServer.objects.count() == 0


def test_fault_on_nth_call_is_counted(cloud):
    d = _driver()
    sim_fault_add(EP, kind="error", method="list_sizes", error="transient", on_call=2, message="boom")
    d.list_sizes()
    with pytest.raises(TransientError, match="boom"):
        d.list_sizes()
    d.list_sizes()
    assert sim_call_count(EP, "list_sizes") == 3


def _pattern(seed):
    sim_cloud_create(EP, api_key=KEY, seed=seed, regions=["r1"], frozen_clock=True)
    sim_fault_add(EP, kind="throttle", method="list_networks", rate=0.5)
    outcome = []
    for _ in range(20):
        try:
            _driver().list_networks()
            outcome.append(True)
        except TransientError as exc:
            assert exc.retry_after
            outcome.append(False)
    return outcome


def test_fault_rate_is_deterministic_with_the_seed(cloud):
    first, again, other = _pattern(1), _pattern(1), _pattern(2)
    assert first == again
    assert 0 < first.count(False) < 20
    assert first != other


def test_latency_moves_the_clock_not_the_wall(cloud):
    sim_fault_add(EP, kind="latency", method="create_server", seconds=12)
    server = _create(_driver())
    assert server.created_at == FROZEN_EPOCH + datetime.timedelta(seconds=12)
    assert sim_cloud(EP).now() == FROZEN_EPOCH + datetime.timedelta(seconds=12)


def test_servers_that_die_and_stuck_transitions(cloud):
    d = _driver()
    sim_fault_add(EP, kind="die", method="create_server", seconds=60, message="disk failed", times=1)
    doomed = _create(d)
    healthy = _create(d)
    sim_advance(EP, 61)
    dead = d.get_server(doomed.id)
    assert (dead.state, dead.fault) == (ServerState.ERROR, "disk failed")
    assert d.get_server(healthy.id).state == ServerState.RUNNING
    sim_server_kill(EP, healthy.id, reason="hypervisor lost")
    assert d.get_server(healthy.id).fault == "hypervisor lost"

    runner = _create(d)
    sim_advance(EP, 30)
    sim_fault_add(EP, kind="stuck", method="stop_server")
    d.stop_server(runner.id)
    sim_advance(EP, 3600)
    assert d.get_server(runner.id).state == ServerState.STOPPING


def test_auth_fault(cloud):
    sim_fault_add(EP, kind="auth", message="key expired")
    with pytest.raises(AuthError, match="key expired"):
        _driver().list_regions()


def test_public_ip_console_and_metrics(cloud):
    d = _driver()
    server = _create(d)
    sim_advance(EP, 30)
    ip = d.allocate_public_ip(tags={"k": "v"})
    d.attach_public_ip(ip.id, server.id)
    assert d.get_server(server.id).public_ips == (ip.address,)
    assert "web-1" in d.console(server.id).output
    sim_advance(EP, 600)
    series = d.cpu_metrics(server.id, since=FROZEN_EPOCH)
    assert len(series) >= 10 and all(0 <= s.percent <= 100 for s in series)
    assert d.cpu_metrics(server.id, since=FROZEN_EPOCH) == series  # deterministic
    d.release_public_ip(ip.id)
    assert d.get_server(server.id).public_ips == ()


def test_list_public_ips_by_tags_leaves_out_released_and_other_regions(cloud):
    d = _driver()
    server = _create(d)
    sim_advance(EP, 30)
    mine = d.allocate_public_ip(tags={"skyport:installation": "i-1", "skyport:operation": "7"})
    other = d.allocate_public_ip(tags={"skyport:installation": "i-1", "skyport:operation": "8"})
    gone = d.allocate_public_ip(tags={"skyport:installation": "i-1", "skyport:operation": "7"})
    elsewhere = _driver("r2").allocate_public_ip(tags={"skyport:installation": "i-1", "skyport:operation": "7"})
    d.attach_public_ip(mine.id, server.id)
    d.release_public_ip(gone.id)

    found = d.list_public_ips(tags={"skyport:installation": "i-1", "skyport:operation": "7"})
    assert [(ip.id, ip.address, ip.server_id) for ip in found] == [(mine.id, mine.address, server.id)]
    assert [ip.id for ip in d.list_public_ips()] == [mine.id, other.id]
    assert d.list_public_ips(tags={"skyport:operation": "9"}) == []
    assert [ip.id for ip in _driver("r2").list_public_ips(tags={"skyport:operation": "7"})] == [elsewhere.id]
    assert sim_call_count(EP, "list_public_ips") == 4


def test_sim_is_disabled_unless_enabled(settings):
    settings.SKYPORT_ENABLE_SIM = False
    with pytest.raises(InvalidRequestError, match="Unknown or disabled"):
        build_driver("sim", credentials={"api_key": KEY}, region="r1", endpoint=EP, options={})


def _fault_queries(call):
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections["sim"]) as ctx:
        call()
    return sum(1 for q in ctx.captured_queries if "simcloud_simfault" in q["sql"] and q["sql"].startswith("SELECT"))


def test_calls_of_a_cloud_without_faults_make_no_fault_query_and_a_new_fault_still_fires(cloud):
    d = _driver()
    assert _fault_queries(d.list_servers) == 1  # a new cloud looks once, finds none
    assert sim_cloud(EP).faults_possible is False
    assert _fault_queries(d.list_servers) == 0
    sim_fault_add(EP, kind="error", method="list_servers", error="transient", times=1)
    assert sim_cloud(EP).faults_possible is True  # on the cloud's row: a call waiting for its lock sees it
    with pytest.raises(TransientError):
        d.list_servers()
    assert _fault_queries(d.list_servers) == 1  # fired its one time: the next call looks, finds none active
    assert sim_cloud(EP).faults_possible is False
    assert _fault_queries(d.list_servers) == 0
