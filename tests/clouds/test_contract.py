"""The driver contract: the same tests against every driver (sim, EC2 on moto, OpenStack under its marker)."""

from __future__ import annotations

import uuid

import pytest

from apps.clouds.drivers.base import AuthError, CreateServer, NotFoundError, ServerState
from apps.clouds.operations import RESIZE_STEP_DONE, resize_step_call
from tests.clouds.fixtures_sim import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

KINDS = ["sim", "ec2", pytest.param("openstack", marks=pytest.mark.openstack)]


@pytest.fixture(params=KINDS)
def harness(request):
    return request.getfixturevalue(f"{request.param}_harness")


def _create(h, **tags):
    marker = uuid.uuid4().hex[:10]
    request = CreateServer(
        name=f"contract-{marker}",
        image_id=h.image_id,
        size_id=h.size_id,
        network_id=h.network_id,
        tags={"skyport:test": marker, **tags},
        idempotency_token=f"contract-{marker}",
    )
    server = h.driver.create_server(request)
    assert server.id
    return server, marker


def test_credentials(harness):
    harness.driver.validate_credentials()
    with pytest.raises(AuthError) as caught:
        harness.bad_credentials_driver.validate_credentials()
    assert caught.value.message  # something an operator can read


def test_catalogue(harness):
    d = harness.driver
    regions = d.list_regions()
    assert regions and all(r.id for r in regions)
    assert d.region in {r.id for r in regions}
    sizes = d.list_sizes()
    assert sizes and all(s.vcpus > 0 and s.ram_mb > 0 for s in sizes)
    assert {harness.size_id, harness.other_size_id} <= {s.id for s in sizes}
    images = d.list_images()
    assert harness.image_id in {i.id for i in images} and all(i.name for i in images)
    networks = d.list_networks()
    assert networks and all(n.id and n.name for n in networks)
    if harness.network_id:
        assert harness.network_id in {n.id for n in networks}


def test_create_tags_and_find(harness):
    server, marker = _create(harness, **{"skyport:operation": "contract"})
    running = harness.wait(server.id, {ServerState.RUNNING})
    assert running.size_id == harness.size_id
    got = harness.driver.get_server(server.id)
    assert got.tags["skyport:test"] == marker and got.tags["skyport:operation"] == "contract"
    assert got.private_ips
    found = harness.driver.list_servers(tags={"skyport:test": marker})
    assert [s.id for s in found] == [server.id]
    assert harness.driver.list_servers(tags={"skyport:test": "no-such-marker"}) == []
    harness.driver.delete_server(server.id)


def test_stop_start_reboot(harness):
    server, _ = _create(harness)
    harness.wait(server.id, {ServerState.RUNNING})
    harness.driver.stop_server(server.id)
    assert harness.wait(server.id, {ServerState.STOPPED}).state == ServerState.STOPPED
    harness.driver.start_server(server.id)
    harness.wait(server.id, {ServerState.RUNNING})
    harness.driver.reboot_server(server.id)
    assert harness.wait(server.id, {ServerState.RUNNING}).state == ServerState.RUNNING
    harness.driver.delete_server(server.id)


def test_resize(harness):
    server, _ = _create(harness)
    harness.wait(server.id, {ServerState.RUNNING})
    for step in harness.driver.resize_steps:
        resize_step_call(harness.driver, step, server.id, harness.other_size_id)
        harness.wait(server.id, RESIZE_STEP_DONE[step])
    resized = harness.wait(server.id, {ServerState.RUNNING})
    assert resized.size_id == harness.other_size_id
    harness.driver.delete_server(server.id)


def test_delete(harness):
    server, marker = _create(harness)
    harness.wait(server.id, {ServerState.RUNNING})
    harness.driver.delete_server(server.id)
    try:
        gone = harness.wait(server.id, {ServerState.DELETED})
        assert gone.state == ServerState.DELETED
    except NotFoundError:
        pass
    assert harness.driver.list_servers(tags={"skyport:test": marker}) == []


def test_unknown_server_is_not_found(harness):
    with pytest.raises(NotFoundError):
        harness.driver.get_server("i-0123456789abcdef0")


def test_console(harness):
    server, _ = _create(harness)
    harness.wait(server.id, {ServerState.RUNNING})
    console = harness.driver.console(server.id)
    assert console.kind in ("url", "log")
    assert console.url if console.kind == "url" else console.output
    harness.driver.delete_server(server.id)
