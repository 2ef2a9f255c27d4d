"""The sim's limit check counts live servers per size and region in the database: a create costs the same number of
queries however many servers the cloud holds, and the limits still count every live server, resizes included."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from apps.clouds.drivers.base import CapacityError, CreateServer, QuotaError
from apps.clouds.drivers.sim import SimDriver
from apps.clouds.sim.models import SimServer
from apps.clouds.sim.services import sim_cloud_create
from tests.clouds.fixtures_sim import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

EP = "sim://limits"
KEY = "sim-limits-key-0001"


def _driver(region: str = "r1") -> SimDriver:
    return SimDriver(credentials={"api_key": KEY}, region=region, endpoint=EP)


def _create(driver: SimDriver, name: str, size: str = "small") -> str:
    return driver.create_server(CreateServer(name=name, image_id="ubuntu-24.04", size_id=size)).id


def _create_queries(driver: SimDriver, name: str) -> int:
    with CaptureQueriesContext(connections["sim"]) as queries:
        _create(driver, name)
    return len(queries)


def test_a_create_costs_the_same_queries_with_many_servers():
    sim_cloud_create(EP, api_key=KEY, regions=["r1", "r2"], quotas={}, capacity={}, frozen_clock=True)
    driver = _driver()
    _create(driver, "warm-up")
    few = _create_queries(driver, "second")
    for index in range(20):
        _create(driver, f"more-{index}", size="medium" if index % 2 else "small")
    assert _create_queries(driver, "last") == few


def test_limits_count_every_live_server_by_size_region_and_pending_resize():
    sim_cloud_create(EP, api_key=KEY, regions=["r1", "r2"], quotas={"vcpus": 12, "instances": 10},
                     capacity={"r1": 7}, frozen_clock=True)
    r1, r2 = _driver("r1"), _driver("r2")
    _create(r1, "a", "medium")  # 2 vCPUs in r1
    resized = _create(r1, "b", "small")
    SimServer.objects.filter(server_id=resized).update(pending_size_id="large")  # counts as 4 while resizing
    _create(r2, "c", "large")  # 4 vCPUs in r2: 10 in all
    with pytest.raises(CapacityError):
        _create(r1, "d", "medium")  # r1 holds 6 of 7 (the resize counts at its new size)
    before = SimServer.objects.count()
    with pytest.raises(QuotaError, match="vcpus: 10 of 12"):
        _create(r2, "e", "large")
    assert SimServer.objects.count() == before
    _create(r2, "f", "medium")  # exactly 12
