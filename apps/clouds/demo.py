"""Demo clouds: Acme gets sim-east and sim-west (different prices and capacity) granted to both projects, Globex
one sim account; each synced so flavors, images and networks exist. Idempotent."""

from __future__ import annotations

import secrets
from typing import Any

from apps.accounts.models import Organization, Project, User
from apps.clouds import services
from apps.clouds.models import CloudAccount, CloudGrant
from apps.core.roles import Role

# name → (organisation slug, sim endpoint, price factor, vCPU capacity per region, regions)
DEMO_CLOUDS: dict[str, tuple[str, str, str, int, list[str]]] = {
    "sim-east": ("acme", "sim://acme-east", "1.0", 400, ["east-1", "east-2"]),
    "sim-west": ("acme", "sim://acme-west", "0.8", 64, ["west-1"]),
    "sim-globex": ("globex", "sim://globex", "1.2", 200, ["region-1"]),
}


def _demo_key() -> str:
    # random per seed: sim endpoints are shared by every organisation, so a guessable key would let one
    # organisation connect another's simulated cloud
    return "sim-" + secrets.token_urlsafe(24)


def _org_admin(org: Organization) -> User:
    from apps.accounts.models import Membership

    membership = (
        Membership.objects.all_tenants()
        .filter(organization=org, project__isnull=True, role=Role.ADMIN)
        .select_related("user")
        .order_by("pk")
        .first()
    )
    if membership is None:
        raise RuntimeError(f"organisation {org.slug} has no admin to own its demo clouds")
    return membership.user


def seed_clouds() -> dict[str, CloudAccount]:
    from apps.clouds.sim.models import SimCloud
    from apps.clouds.sim.services import sim_cloud_create

    accounts: dict[str, CloudAccount] = {}
    for name, (org_slug, endpoint, factor, capacity, regions) in DEMO_CLOUDS.items():
        org = Organization.objects.all_tenants().get(slug=org_slug)
        admin = _org_admin(org)
        account = CloudAccount.objects.all_tenants().filter(organization=org, slug=name).first()
        if account is None:
            key = _demo_key()
            # a sim cloud left from an earlier seed without its account: its key is gone, so it starts afresh
            SimCloud.objects.filter(endpoint=endpoint).delete()
            sim_cloud_create(
                endpoint, api_key=key, seed=len(name), regions=regions, price_factor=factor,
                capacity={r: capacity for r in regions},
            )
            account = services.cloud_account_create(
                actor=admin, organization=org, name=name, kind="sim", endpoint=endpoint, regions=regions,
                credentials={"api_key": key}, options={},
            )
        projects = Project.objects.all_tenants().filter(organization=org)
        for project in projects:
            live = CloudGrant.objects.all_tenants().filter(account=account, project=project, revoked_at__isnull=True)
            if not live.exists():
                services.grant_create(actor=admin, account=account, project=project)
        services.sync_account(account=account)
        accounts[name] = account
    return accounts


def describe(accounts: dict[str, Any]) -> list[str]:
    return [f"  {name:<11} {a.kind} {', '.join(a.all_regions)}" for name, a in accounts.items()]
