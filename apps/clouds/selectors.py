"""Reads about cloud accounts, always scoped by the actor, and the one launch policy.

`can_launch` decides whether a user may launch on an account-region in a project. The launch path calls it for
one decision; the access review asks the same `LaunchPolicy.decide` for every account x region x project x user,
with the inputs loaded in a fixed number of queries, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from apps.accounts.models import Membership, Project, User
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Health, Network
from apps.core.access import Access, get_access

LAUNCH_ACTION = "deployments.launch"


# --- the launch policy --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchDecision:
    allowed: bool
    reason: str
    grant_id: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


class LaunchPolicy:
    """Account active and not failing; a live grant of the account to the project covering the region; the user
    may launch in the project. The first rule that fails gives the reason."""

    def decide(
        self, *, access: Access, account: CloudAccount, region: str, project: Project, grant: CloudGrant | None
    ) -> LaunchDecision:
        if account.organization_id != project.organization_id:
            return LaunchDecision(False, f"{account.name} belongs to another organisation than {project.name}.")
        if not account.is_active:
            return LaunchDecision(False, f"{account.name} is deactivated.")
        if account.health == Health.FAILING:
            detail = f": {account.health_message}" if account.health_message else ""
            return LaunchDecision(False, f"{account.name} is failing{detail}")
        if region not in account.all_regions:
            return LaunchDecision(False, f"{account.name} is not used in region {region}.")
        if grant is None or not grant.is_live or grant.account_id != account.pk or grant.project_id != project.pk:
            return LaunchDecision(False, f"{account.name} is not granted to project {project.name}.")
        if not grant.covers(region):
            return LaunchDecision(
                False, f"{project.name} may use {account.name} only in {', '.join(grant.regions)}.", grant.pk
            )
        if not access.can(LAUNCH_ACTION, organization_id=project.organization_id, project_id=project.pk):
            return LaunchDecision(False, f"You may not launch in {project.name} (your role does not allow it).")
        return LaunchDecision(True, "Allowed.", grant.pk)


LAUNCH_POLICY = LaunchPolicy()


def live_grant(account: CloudAccount, project: Project) -> CloudGrant | None:
    return (
        CloudGrant.objects.all_tenants()
        .filter(account_id=account.pk, project_id=project.pk, revoked_at__isnull=True)
        .first()
    )


def live_grants(project: Project) -> dict[int, CloudGrant]:
    """The project's live grants by account id, in one query (what `live_grant` answers for each account)."""
    grants: dict[int, CloudGrant] = {}
    for grant in CloudGrant.objects.all_tenants().filter(project_id=project.pk, revoked_at__isnull=True):
        grants.setdefault(grant.account_id, grant)
    return grants


def can_launch(user: User, account: CloudAccount, region: str, project: Project, *,
               grants: Mapping[int, CloudGrant] | None = None) -> LaunchDecision:
    """May `user` launch on `account` in `region` for `project`? Truthy when allowed; `.reason` says why not.
    `grants` (from `live_grants`) saves the grant query when many account-regions are decided for one project."""
    grant = grants.get(account.pk) if grants is not None else live_grant(account, project)
    return LAUNCH_POLICY.decide(access=get_access(user), account=account, region=region, project=project, grant=grant)


# --- the access review ------------------------------------------------------------------------------------------
@dataclass
class ReviewRow:
    account: CloudAccount
    project: Project
    user: User
    role: str  # the role that lets the user launch there
    regions: list[str]
    grant: CloudGrant


@dataclass
class AccessReview:
    rows: list[ReviewRow]
    revoked: list[CloudGrant]
    accounts: list[CloudAccount]
    projects: list[Project]
    users: list[User]
    # (account, project) pairs granted but where nobody can launch, and why (e.g. account failing)
    blocked: list[tuple[CloudGrant, str]] = field(default_factory=list)


def org_accesses(organization_id: int) -> tuple[dict[int, Access], dict[int, User]]:
    """Access of every active member of one organisation, from one query (decisions inside this organisation only
    need its memberships: `Access.can` never crosses organisations)."""
    now = timezone.now()
    memberships = (
        Membership.objects.all_tenants()
        .filter(organization_id=organization_id, organization__is_active=True, user__is_active=True)
        .exclude(expires_at__lte=now)
        .select_related("user")
    )
    org_roles: dict[int, set[str]] = {}
    project_roles: dict[int, dict[int, tuple[int, str]]] = {}
    users: dict[int, User] = {}
    for m in memberships:
        users[m.user_id] = m.user
        if m.project_id is None:
            org_roles.setdefault(m.user_id, set()).add(m.role)
        else:
            project_roles.setdefault(m.user_id, {})[m.project_id] = (organization_id, m.role)
    accesses = {
        uid: Access(
            user_id=uid,
            org_roles={organization_id: frozenset(org_roles[uid])} if uid in org_roles else {},
            project_roles=project_roles.get(uid, {}),
        )
        for uid in users
    }
    return accesses, users


def _role_for(access: Access, project: Project) -> str:
    role = access.project_roles.get(project.pk, (None, ""))[1]
    org_roles = sorted(access.org_roles.get(project.organization_id, ()))
    return ", ".join([r for r in org_roles] + ([role] if role else []))


def access_review(
    actor: User,
    organization_id: int,
    *,
    account_id: int | None = None,
    project_id: int | None = None,
    username: str | None = None,
) -> AccessReview:
    """Accounts x projects x users who can launch there, for one organisation, in a fixed number of queries."""
    accounts = list(
        CloudAccount.objects.for_user(actor, "access.review").filter(organization_id=organization_id).order_by("name")
    )
    projects = list(
        Project.objects.for_user(actor, "access.review").filter(organization_id=organization_id).order_by("name")
    )
    account_by_id = {a.pk: a for a in accounts}
    project_by_id = {p.pk: p for p in projects}
    grants = list(
        CloudGrant.objects.for_user(actor, "access.review")
        .filter(organization_id=organization_id)
        .select_related("granted_by", "revoked_by")
        .order_by("account_id", "project_id", "-created_at")
    )
    accesses, users = org_accesses(organization_id) if accounts else ({}, {})
    all_users = sorted(users.values(), key=lambda u: u.username)
    wanted_users = [u for u in all_users if not username or u.username.lower() == username.lower()]
    rows: list[ReviewRow] = []
    blocked: list[tuple[CloudGrant, str]] = []
    revoked: list[CloudGrant] = []
    for grant in grants:
        account, project = account_by_id.get(grant.account_id), project_by_id.get(grant.project_id)
        if account is None or project is None:
            continue
        if (account_id and account.pk != account_id) or (project_id and project.pk != project_id):
            continue
        grant.account, grant.project = account, project  # already loaded: no query per row
        if not grant.is_live:
            revoked.append(grant)
            continue
        anyone = False
        reason = ""
        for user in wanted_users:
            access = accesses[user.pk]
            allowed = []
            for region in account.all_regions:
                decision = LAUNCH_POLICY.decide(
                    access=access, account=account, region=region, project=project, grant=grant
                )
                if decision.allowed:
                    allowed.append(region)
                else:
                    reason = reason or decision.reason
            if allowed:
                anyone = True
                rows.append(ReviewRow(account, project, user, _role_for(access, project), allowed, grant))
        if not anyone:
            blocked.append((grant, reason or "Nobody in this project may launch."))
    return AccessReview(rows, revoked, accounts, projects, all_users, blocked)


def review_csv_rows(review: AccessReview) -> Iterator[list[Any]]:
    for r in review.rows:
        yield [
            r.account.name, r.account.kind, r.project.slug, r.user.username, r.user.display_name, r.role,
            " ".join(r.regions), r.grant.created_at.isoformat(),
            r.grant.granted_by.username if r.grant.granted_by else "",
        ]


REVIEW_CSV_HEADER = ["account", "provider", "project", "username", "name", "role", "regions", "granted_at",
                     "granted_by"]


# --- accounts and their catalogue ---------------------------------------------------------------------------------
def accounts_with_counts(user: User, organization_id: int) -> QuerySet[CloudAccount]:
    """Accounts of the organisation with flavor/image/live-grant counts, in one query."""
    active = Q(is_active=True)
    return (
        CloudAccount.objects.for_user(user)
        .filter(organization_id=organization_id)
        .annotate(
            flavor_count=_count(Flavor, active),
            image_count=_count(CloudImage, active),
            network_count=_count(Network, active),
            grant_count=Count("grants", filter=Q(grants__revoked_at__isnull=True), distinct=True),
        )
        .order_by("-is_active", "name")
    )


def _count(model: Any, extra: Q) -> Any:
    from django.db.models import IntegerField, OuterRef, Subquery
    from django.db.models.functions import Coalesce

    sub = (
        model.objects.all_tenants()
        .filter(extra, account_id=OuterRef("pk"))
        .order_by()
        .values("account_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(sub, output_field=IntegerField()), 0)


def seconds_ago(moment: Any) -> int | None:
    if moment is None:
        return None
    return max(int((timezone.now() - moment).total_seconds()), 0)
