"""Harness fixtures (see tests/clouds/conftest.py): the simulated cloud.

Tests that touch the sim need its database too: `@pytest.mark.django_db(databases=SIM_DATABASES)`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from apps.clouds.drivers.base import Server, ServerState
from apps.clouds.drivers.sim import SimDriver
from apps.clouds.sim.services import sim_advance, sim_cloud_create
from tests.clouds.harness import Harness

SIM_DATABASES = ["default", "sim"]
SIM_ENDPOINT = "sim://contract"
SIM_API_KEY = "sim-contract-key-0001"
SIM_REGION = "region-1"


@dataclass
class SimHarness(Harness):
    endpoint: str = SIM_ENDPOINT
    api_key: str = SIM_API_KEY

    def advance(self, seconds: float) -> None:
        sim_advance(self.endpoint, seconds)


def sim_wait(endpoint: str, driver: SimDriver, step: float = 5.0, limit: int = 200):
    """wait(server_id, states): advance the sim's clock until the server is in one of `states`."""

    def wait(server_id: str, states: set[ServerState]) -> Server:
        last = None
        for _ in range(limit):
            server = driver.get_server(server_id)
            if server.state in states:
                return server
            last = server.state
            sim_advance(endpoint, step)
        raise AssertionError(f"server {server_id} never reached {sorted(states)}; last state {last}")

    return wait


@pytest.fixture(scope="session", autouse=True)
def _close_sim_connection(django_db_setup, django_db_blocker):
    """On PostgreSQL the sim's connection shares the test database: close it before the database is dropped."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        connections["sim"].close()


@pytest.fixture
def sim_harness(request) -> SimHarness:
    databases = getattr(request.node.get_closest_marker("django_db"), "kwargs", {}).get("databases", ())
    if databases != "__all__" and "sim" not in databases:
        pytest.fail("tests using sim_harness need @pytest.mark.django_db(databases=SIM_DATABASES)")
    sim_cloud_create(SIM_ENDPOINT, api_key=SIM_API_KEY, seed=7, regions=[SIM_REGION, "region-2"], frozen_clock=True)
    driver = SimDriver(credentials={"api_key": SIM_API_KEY}, region=SIM_REGION, endpoint=SIM_ENDPOINT)
    return SimHarness(
        kind="sim",
        driver=driver,
        image_id="ubuntu-24.04",
        size_id="small",
        other_size_id="medium",
        network_id="net-private",
        wait=sim_wait(SIM_ENDPOINT, driver),
        bad_credentials_driver=SimDriver(
            credentials={"api_key": "not-the-key"}, region=SIM_REGION, endpoint=SIM_ENDPOINT
        ),
    )
