"""Deployment page routes for the generated isolation walk (keyword arguments of tests.test_route_walk.Route), and the
Acme rows they point at (rows only: the walk never reaches a provider).

`deployments_world(mark, acme, web, account, connor)` returns the objects named by `obj`; DEPLOYMENT_MODELS are the
tenant models whose Acme rows the walk's snapshot should cover.
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from apps.accounts.models import Organization, Project, SshKey, User
from apps.catalog.models import CatalogItem, CatalogPublication
from apps.core import crypto
from apps.deployments.models import (
    Approval,
    Deployment,
    Hook,
    HookDelivery,
    Instance,
    InstanceTransition,
    Quota,
    QuotaReservation,
    UnmanagedServer,
)

DEPLOYMENT_MODELS = (Deployment, Instance, InstanceTransition, Quota, QuotaReservation, Approval, Hook, HookDelivery,
                     UnmanagedServer)
# a launchable item whose slug does not carry the marker (an outsider's 404 page repeats the URL it was asked for)
ITEM_SLUG = "walk-launch"
# an ed25519 public key (any valid one: the walk never uses it)
WALK_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeU7R97xxhm6xczDPNw23oY/P/BlUU5aPaPc5qHE42V walk@acme"

ROUTES: dict[str, dict[str, Any]] = {
    # the list and one deployment
    "deployments:list": dict(allowed="connor", shows_marker=True),
    "deployments:rows": dict(allowed="connor", shows_marker=True),
    "deployments:bulk": dict(methods=("post",), allowed="connor", ok=(302,)),
    "deployments:launch": dict(methods=("get", "post"), allowed="connor", kwargs={"slug": ITEM_SLUG},
                               shows_marker=True),
    "deployments:launch-preview": dict(allowed="connor", kwargs={"slug": ITEM_SLUG}, shows_marker=True),
    "deployments:detail": dict(obj="deployment", allowed="connor", shows_marker=True),
    "deployments:live": dict(obj="deployment", allowed="connor", shows_marker=True),
    "deployments:action": dict(obj="deployment", methods=("post",), allowed="connor", ok=(302,)),
    "deployments:extend": dict(obj="deployment", methods=("post",), allowed="connor", ok=(302, 400)),
    "deployments:transfer": dict(obj="deployment", methods=("post",), allowed="connor", ok=(302, 400)),
    "deployments:instance-action": dict(obj="instance", methods=("post",), allowed="connor", ok=(302,)),
    "deployments:console": dict(obj="instance", allowed="connor", shows_marker=True),
    # organisation roles
    "deployments:approvals": dict(allowed="sam", shows_marker=True),
    "deployments:approval-detail": dict(obj="approval", allowed="sam", shows_marker=True),
    "deployments:approval-decide": dict(obj="approval", methods=("post",), allowed="sam", ok=(302, 400)),
    "deployments:quotas": dict(methods=("get", "post"), allowed="sam", shows_marker=True),
    "deployments:quota-delete": dict(obj="quota", methods=("post",), allowed="sam", ok=(302,)),
    "deployments:hooks": dict(methods=("get", "post"), allowed="sam", shows_marker=True),
    "deployments:hook-edit": dict(obj="hook", methods=("get", "post"), allowed="sam", shows_marker=True),
    "deployments:hook-delete": dict(obj="hook", methods=("post",), allowed="sam", ok=(302,)),
    "deployments:hook-test": dict(obj="hook", methods=("post",), allowed="sam", ok=(302,)),
    "deployments:attention": dict(allowed="sam", shows_marker=True),
    "deployments:adopt": dict(obj="unmanaged_server", methods=("post",), allowed="sam", ok=(302, 400)),
    # Profile → SSH keys (personal: another person's key answers 404)
    "accounts:ssh-keys": dict(methods=("get", "post"), allowed="connor", shows_marker=True),
    "accounts:ssh-key-delete": dict(obj="ssh_key", methods=("post",), allowed="connor", ok=(302,)),
}


def deployments_world(mark: str, acme: Organization, web: Project, account: Any, connor: User) -> dict[str, Any]:
    """Acme deployment rows carrying the marker: a catalog item to launch (made from the organisation's first
    image item, when the catalog world exists), connor's running deployment with one instance and a transition, a
    launch waiting for approval, a project quota, a hook with a delivery, a server found in the cloud account and
    connor's SSH key."""
    now = timezone.now()
    low = mark.lower()
    item = None
    model = CatalogItem.objects.all_tenants().filter(organization=acme, kind=CatalogItem.Kind.IMAGE).order_by(
        "pk").first()
    if model is not None:  # the catalog world is there (the route walk): an item to launch from its image
        item = CatalogItem.objects.create(organization=acme, project=web, name=f"{mark} launch item",
                                          slug=ITEM_SLUG, kind=CatalogItem.Kind.IMAGE, image=model.image,
                                          profile=model.profile)
        CatalogPublication.objects.create(organization=acme, item=item, project=web)
    deployment = Deployment.objects.create(
        organization=acme, project=web, owner=connor, created_by=connor, name=f"{low}-dep", state="active",
        placement={"policy": "cheapest", "servers": {}}, estimated_hourly=Decimal("0.02"),
    )
    instance = Instance.objects.create(
        organization=acme, project=web, deployment=deployment, owner=connor, name=f"{low}-dep", role="server",
        account=account, region="region-1", size="small", flavor_id="f1", vcpus=1, ram_mb=512, state="running",
        private_ips=["10.0.0.5"], price_per_hour=Decimal("0.02"),
    )
    InstanceTransition.objects.create(
        organization=acme, project=web, instance=instance, from_state="building", to_state="running",
        cause="operation", message=mark, observed_at=now, detected_at=now, owner=connor, account=account,
        region="region-1", flavor_id="f1", size="small", vcpus=1, ram_mb=512,
    )
    waiting = Deployment.objects.create(organization=acme, project=web, owner=connor, created_by=connor,
                                        name=f"{low}-wait", state="pending_approval")
    approval = Approval.objects.create(organization=acme, project=web, deployment=waiting, requested_by=connor,
                                       reason=f"{mark} reason", expires_at=now + datetime.timedelta(hours=48))
    quota = Quota.objects.create(organization=acme, project=web, max_vcpus=10)
    hook = Hook.objects.create(organization=acme, name=f"{mark} hook", url="https://hooks.example/skyport",
                               phase=Hook.Phase.BEFORE, secret_encrypted=crypto.encrypt("walk-secret-0123456789"),
                               secret_last4="6789")
    HookDelivery.objects.create(organization=acme, hook=hook, deployment=deployment, event="test",
                                delivery_id=f"{low}-delivery", state=HookDelivery.State.DELIVERED, message=mark)
    server = UnmanagedServer.objects.create(
        organization=acme, account=account, region="region-1", provider_server_id=f"{low}-srv", name=f"{mark} stray",
        state="running", first_seen_at=now, last_seen_at=now,
    )
    key = SshKey.objects.create(user=connor, name=f"{mark} key", public_key=WALK_PUBLIC_KEY,
                                fingerprint="SHA256:EUL9JwHLLqrlUn4zS9kpNthT/xkUlF4sGNnhAcGyMIQ")
    return {"launch_item": item, "deployment": deployment, "instance": instance, "approval": approval,
            "quota": quota, "hook": hook, "unmanaged_server": server, "ssh_key": key}
