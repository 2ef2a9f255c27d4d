"""Looking up several servers at once (the reconciler's look-ups of watched servers): EC2 answers them in one
DescribeInstances (plus the one DescribeAddresses every describe makes), leaves out an id it does not know instead of
failing the call; the default loop does the same for drivers without a batch call."""

from __future__ import annotations

import pytest

from apps.clouds.drivers.base import CreateServer, ServerState
from tests.clouds.fixtures_moto import HARNESS_IMAGE_ID
from tests.clouds.fixtures_sim import SIM_DATABASES
from tests.clouds.test_ec2_create_calls import _recording


@pytest.mark.django_db
def test_ec2_looks_up_several_instances_in_one_describe(ec2_harness, monkeypatch):
    driver = ec2_harness.driver
    made = [driver.create_server(CreateServer(name=f"w-{n}", image_id=HARNESS_IMAGE_ID, size_id="t3.micro"))
            for n in range(3)]
    for server in made:
        ec2_harness.wait(server.id, {ServerState.RUNNING})
    driver.stop_server(made[1].id)
    actions = _recording(driver, monkeypatch)
    found = driver.get_servers([made[0].id, made[1].id, "i-0000000000000dead", made[2].id, "not-an-ec2-id"])
    assert actions == ["DescribeInstances", "DescribeAddresses"]
    assert set(found) == {s.id for s in made}
    assert found[made[0].id].state == ServerState.RUNNING
    assert found[made[1].id].state in {ServerState.STOPPING, ServerState.STOPPED}
    assert driver.get_servers(["not-an-ec2-id"]) == {} and actions[2:] == []  # nothing to ask: no call


@pytest.mark.django_db(databases=SIM_DATABASES)
def test_the_default_loop_leaves_out_what_the_provider_does_not_know(sim_harness):
    driver = sim_harness.driver
    server = driver.create_server(CreateServer(name="one", image_id=sim_harness.image_id,
                                               size_id=sim_harness.size_id))
    found = driver.get_servers([server.id, "sim-missing-1"])
    assert list(found) == [server.id] and found[server.id].name == "one"
