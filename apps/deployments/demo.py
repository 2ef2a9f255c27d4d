"""Demo deployments for Acme: connor's running, stopped and failed deployments in both projects across both sim
accounts, one waiting for an approval, one whose lease ends soon; quotas; a before-launch hook served by the demo
itself that vetoes names containing "forbidden". Idempotent: deployments that exist are left as they are."""

from __future__ import annotations

import datetime
import logging
import os
import secrets
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import Organization, Project, User
from apps.catalog.models import CatalogItem
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.operations_tasks import operations_resume
from apps.clouds.sim.models import SimCloud
from apps.clouds.sim.services import sim_advance, sim_fault_add, sim_faults_clear
from apps.core.permissions import ServiceError
from apps.deployments import services
from apps.deployments.demo_hook import DEMO_HOOK_PATH
from apps.deployments.models import Deployment, Hook, Quota
from apps.deployments.states import DeploymentState

log = logging.getLogger(__name__)

DEMO_HOOK_NAME = "Acme naming policy"


def _drive(rounds: int = 40) -> None:
    """Let the sims finish what was asked of them now instead of in a minute: move their clocks on and run the
    operations that wait for them."""
    for _ in range(rounds):
        Operation.objects.all_tenants().filter(state=Operation.State.PENDING).update(next_attempt_at=None)
        operations_resume()
        if not Operation.objects.all_tenants().filter(
                state__in=[Operation.State.PENDING, Operation.State.RUNNING]).exists():
            return
        for endpoint in SimCloud.objects.values_list("endpoint", flat=True):
            sim_advance(endpoint, 10)


def _launch(actor: User, project: Project, item: CatalogItem, name: str, **kwargs: Any) -> Deployment | None:
    existing = Deployment.objects.all_tenants().filter(project=project, name=name).first()
    if existing is not None:
        return None
    with transaction.atomic():
        deployment, _ = services.deployment_request(actor=actor, project=project, item=item, name=name, **kwargs)
    # launched once the request commits; running it here too is harmless (only the first run moves it on) and
    # makes the seed independent of when commit callbacks run
    services.deployment_launch(deployment.pk)
    return deployment


def seed_deployments() -> dict[str, int]:
    acme = Organization.objects.all_tenants().get(slug="acme")
    web = Project.objects.all_tenants().get(organization=acme, slug="web")
    data = Project.objects.all_tenants().get(organization=acme, slug="data")
    connor, sam = User.objects.get(username="connor"), User.objects.get(username="sam")
    east = CloudAccount.objects.all_tenants().get(organization=acme, slug="sim-east")
    west = CloudAccount.objects.all_tenants().get(organization=acme, slug="sim-west")
    items = {i.slug: i for i in CatalogItem.objects.all_tenants().filter(organization=acme)}
    debian, ubuntu, two_tier = items["debian-12-server"], items["ubuntu-2404-server"], items["two-tier-web-application"]

    Quota.objects.all_tenants().get_or_create(organization=acme, project=None, user=None,
                                              defaults={"max_vcpus": 64, "max_ram_mb": 131072, "updated_by": sam})
    Quota.objects.all_tenants().get_or_create(organization=acme, project=web, defaults={"max_instances": 20,
                                                                                       "updated_by": sam})
    Quota.objects.all_tenants().get_or_create(organization=acme, user=connor, defaults={"max_vcpus": 24,
                                                                                       "updated_by": sam})
    if ubuntu.lease_days is None:
        CatalogItem.objects.all_tenants().filter(pk=ubuntu.pk).update(lease_days=30, lease_max_days=90,
                                                                      lease_action="stop")
        ubuntu.refresh_from_db()

    _launch(connor, web, debian, "build-box")
    _launch(connor, web, two_tier, "shop")
    old = _launch(connor, web, debian, "old-box", account=east)
    _launch(connor, data, ubuntu, "etl-worker", account=east)
    soon = _launch(connor, data, ubuntu, "nightly-report", account=west)
    _drive()
    if old is not None:
        services.deployment_action(actor=connor, deployment=old, action="stop")
    if soon is not None:
        Deployment.objects.all_tenants().filter(pk=soon.pk).update(
            lease_expires_at=timezone.now() + datetime.timedelta(hours=20))
    # a launch the cloud refuses: the deployment shows the provider's reason and offers a retry
    if not Deployment.objects.all_tenants().filter(project=data, name="analytics").exists():
        sim_fault_add(east.endpoint, kind="error", method="create_server", error="invalid", times=1,
                      message="No valid host was found: the region has no host with this CPU model.")
        _launch(connor, data, ubuntu, "analytics", account=east)
        _drive()
        sim_faults_clear(east.endpoint)
    _drive()
    # a request over the item's threshold waits for sam
    if not Deployment.objects.all_tenants().filter(project=data, name="big-cruncher").exists():
        CatalogItem.objects.all_tenants().filter(pk=ubuntu.pk).update(approval_threshold_monthly=Decimal("50"))
        ubuntu.refresh_from_db()
        _launch(connor, data, ubuntu, "big-cruncher", size="large", account=east)

    if not Hook.objects.all_tenants().filter(organization=acme, name=DEMO_HOOK_NAME).exists():
        from apps.deployments.hooks import hook_create

        base = os.environ.get("SKYPORT_DEMO_URL", "http://127.0.0.1:8000").rstrip("/")
        try:
            hook_create(actor=sam, organization=acme, name=DEMO_HOOK_NAME, url=base + DEMO_HOOK_PATH,
                        phase=Hook.Phase.BEFORE, secret=secrets.token_urlsafe(24), timeout_seconds=5)
        except ServiceError as exc:  # e.g. the demo's own address is not in SKYPORT_ALLOWED_PRIVATE_NETWORKS
            log.warning("demo hook not created: %s", "; ".join(exc.messages))
    mine = Deployment.objects.all_tenants().filter(organization=acme)
    return {
        "deployments": mine.count(),
        "active": mine.filter(state=DeploymentState.ACTIVE).count(),
        "waiting": mine.filter(state=DeploymentState.PENDING_APPROVAL).count(),
    }
