"""The demo deployments: what `make demo` shows consumers and sysadmins, seeded twice safely."""

from __future__ import annotations

import pytest

from apps.clouds.sim.models import SimServer
from apps.deployments.demo import seed_deployments
from apps.deployments.models import Deployment, Hook, Quota
from tests.deployments.conftest import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def test_demo_deployments(launch_world, connor, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        counts = seed_deployments()
    states = dict(Deployment.objects.all_tenants().values_list("name", "state"))
    assert states == {
        "build-box": "active", "shop": "active", "old-box": "active", "etl-worker": "active",
        "nightly-report": "active", "analytics": "partially_failed", "big-cruncher": "pending_approval",
    }, states
    deployments = {d.name: d for d in Deployment.objects.all_tenants().select_related("project")}
    assert {d.project.slug for d in deployments.values()} == {"web", "data"}
    assert set(deployments["old-box"].instances.values_list("state", flat=True)) == {"stopped"}
    assert deployments["nightly-report"].lease_expires_at is not None
    assert "No valid host" in deployments["analytics"].instances.get().error
    accounts = {i.account.slug for d in deployments.values() for i in d.instances.all()}
    assert accounts == {"sim-east", "sim-west"}
    live = [s for s in SimServer.objects.exclude(state="deleted") if s.tags.get("skyport:deployment")]
    assert len(live) == 7  # build-box, the 3 of shop, old-box, etl-worker, nightly-report; analytics failed
    assert Quota.objects.all_tenants().count() == 3
    assert Hook.objects.all_tenants().filter(phase="before_launch", is_enabled=True).count() == 1
    assert counts == {"deployments": 7, "active": 5, "waiting": 1}
    # seeding again changes nothing
    with django_capture_on_commit_callbacks(execute=True):
        assert seed_deployments() == counts
    assert Deployment.objects.all_tenants().count() == 7
