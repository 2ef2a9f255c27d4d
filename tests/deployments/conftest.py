"""Deployment fixtures: the demo clouds and catalog (two Acme sim accounts with approved images copied everywhere,
profiles, a two-tier blueprint, catalog items) with the sims' clocks frozen, and `settle` to drive the launch:
advance the sims' clocks and run the operations that are due, until nothing is left to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from apps.catalog.models import CatalogItem
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.sim.models import SimCloud
from apps.clouds.sim.services import sim_advance
from tests.catalog.conftest import image_store_dir  # noqa: F401  (a private image store per test)
from tests.clouds.fixtures_sim import SIM_DATABASES, _close_sim_connection  # noqa: F401  (PostgreSQL teardown)

__all__ = ["SIM_DATABASES"]


@pytest.fixture
def launch_world(personas, image_store_dir, django_capture_on_commit_callbacks) -> dict[str, Any]:  # noqa: F811
    from apps.catalog.demo import seed_catalog
    from apps.clouds.demo import seed_clouds

    accounts = seed_clouds()
    with django_capture_on_commit_callbacks(execute=True):
        seed_catalog()
    SimCloud.objects.update(clock_frozen_at=timezone.now(), clock_offset=0)
    items = {i.slug: i for i in CatalogItem.objects.all_tenants().filter(organization__slug="acme")}
    return {"accounts": accounts, "items": items}


def run_due_operations() -> int:
    """Run every operation that is pending or whose lease expired, as the periodic resume would (parked ones are
    made due at once: the sims' clocks, not the wall clock, decide when the provider is done)."""
    from apps.clouds.operations_tasks import operations_resume

    Operation.objects.all_tenants().filter(state=Operation.State.PENDING).update(next_attempt_at=None)
    return operations_resume()


@pytest.fixture
def settle(django_capture_on_commit_callbacks) -> Callable[..., int]:
    """settle(rounds=60, step=5): advance every sim by `step` seconds and run the due operations, until no
    operation is pending or running. Returns the rounds taken."""

    def run(rounds: int = 60, step: float = 5.0) -> int:
        for n in range(rounds):
            with django_capture_on_commit_callbacks(execute=True):
                run_due_operations()
            if not Operation.objects.all_tenants().filter(
                    state__in=[Operation.State.PENDING, Operation.State.RUNNING]).exists():
                return n
            for endpoint in SimCloud.objects.values_list("endpoint", flat=True):
                sim_advance(endpoint, step)
        raise AssertionError("operations still pending after settling: " + ", ".join(
            f"{o.kind}#{o.pk} {o.state} {o.result.get('waiting_for', '')} {o.error}"
            for o in Operation.objects.all_tenants().filter(state__in=["pending", "running"])))

    return run


def account(name: str) -> CloudAccount:
    return CloudAccount.objects.all_tenants().get(slug=name)
