"""Cloud accounts for the account, grant, sync, review, page and API tests: real simulated clouds, created through
the sim's own service and connected through apps.clouds.services (so the provider check really runs)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from apps.clouds import services
from apps.clouds.models import CloudAccount

DBS = ["default", "sim"]
_serial = itertools.count(1)


def make_sim_cloud(*, api_key: str = "sim-test-key-1234", regions: list[str] | None = None, **kwargs: Any) -> str:
    from apps.clouds.sim.services import sim_cloud_create

    endpoint = f"sim://test-{next(_serial)}-{id(kwargs)}"
    sim_cloud_create(endpoint, api_key=api_key, regions=regions or ["region-1", "region-2"], frozen_clock=True,
                     **kwargs)
    return endpoint


def connect(actor: Any, organization: Any, name: str, *, api_key: str = "sim-test-key-1234",
            regions: list[str] | None = None, endpoint: str | None = None, **kwargs: Any) -> CloudAccount:
    regions = regions or ["region-1", "region-2"]
    endpoint = endpoint or make_sim_cloud(api_key=api_key, regions=regions, **kwargs)
    return services.cloud_account_create(
        actor=actor, organization=organization, name=name, kind="sim", endpoint=endpoint, regions=regions,
        credentials={"api_key": api_key},
    )


@pytest.fixture
def east(sam, acme) -> CloudAccount:
    account = connect(sam, acme, "east")
    services.sync_account(account=account)
    account.refresh_from_db()
    return account


@pytest.fixture
def east_granted(east, sam, web, data) -> CloudAccount:
    services.grant_create(actor=sam, account=east, project=web)
    services.grant_create(actor=sam, account=east, project=data, regions=["region-1"])
    return east
