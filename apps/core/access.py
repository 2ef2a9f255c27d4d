"""What one user may do where: memberships loaded once per request and asked through the role table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from apps.core.roles import role_allows


@dataclass(frozen=True)
class Access:
    user_id: int | None
    # organisation id → org-level roles held there
    org_roles: dict[int, frozenset[str]] = field(default_factory=dict)
    # project id → (organisation id, project role)
    project_roles: dict[int, tuple[int, str]] = field(default_factory=dict)

    @property
    def organization_ids(self) -> set[int]:
        return set(self.org_roles) | {org for org, _ in self.project_roles.values()}

    def orgs_allowing(self, action: str) -> set[int]:
        return {org for org, roles in self.org_roles.items() if any(role_allows(r, action) for r in roles)}

    def projects_allowing(self, action: str) -> set[int]:
        return {p for p, (_, role) in self.project_roles.items() if role_allows(role, action)}

    def orgs_reached_through_projects(self, action: str) -> set[int]:
        return {org for _, (org, role) in self.project_roles.items() if role_allows(role, action)}

    def can(self, action: str, *, organization_id: int | None, project_id: int | None = None) -> bool:
        """May the user do `action` on a row of this organisation (and project, when the row has one)?"""
        if organization_id is None:
            return False
        if organization_id in self.orgs_allowing(action):
            return True
        if project_id is not None:
            entry = self.project_roles.get(project_id)
            return entry is not None and entry[0] == organization_id and role_allows(entry[1], action)
        return organization_id in self.orgs_reached_through_projects(action)

    def can_on(self, action: str, obj: Any) -> bool:
        org_id, project_id = tenant_of(obj)
        return self.can(action, organization_id=org_id, project_id=project_id)

    def roles_in(self, organization_id: int) -> set[str]:
        roles = set(self.org_roles.get(organization_id, ()))
        roles |= {role for org, role in self.project_roles.values() if org == organization_id}
        return roles


NO_ACCESS = Access(user_id=None)


def tenant_of(obj: Any) -> tuple[int | None, int | None]:
    """(organisation id, project id) of a tenant row, an Organization or a Project."""
    from apps.accounts.models import Organization, Project

    if isinstance(obj, Organization):
        return obj.pk, None
    if isinstance(obj, Project):
        return obj.organization_id, obj.pk
    return getattr(obj, "organization_id", None), getattr(obj, "project_id", None)


def get_access(user: Any) -> Access:
    """The user's live memberships (expired ones excluded), cached on the user object for one request."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return NO_ACCESS
    cached = getattr(user, "_skyport_access", None)
    if cached is not None:
        return cached
    from apps.accounts.models import Membership

    now = timezone.now()
    org_roles: dict[int, set[str]] = {}
    project_roles: dict[int, tuple[int, str]] = {}
    rows = (
        Membership._base_manager.filter(user_id=user.pk, organization__is_active=True)
        .exclude(expires_at__lte=now)
        .values_list("organization_id", "project_id", "role")
    )
    for org_id, project_id, role in rows:
        if project_id is None:
            org_roles.setdefault(org_id, set()).add(role)
        else:
            project_roles[project_id] = (org_id, role)
    access = Access(
        user_id=user.pk,
        org_roles={k: frozenset(v) for k, v in org_roles.items()},
        project_roles=project_roles,
    )
    user._skyport_access = access
    return access


def forget_access(user: Any) -> None:
    if hasattr(user, "_skyport_access"):
        del user._skyport_access


def can(user: Any, action: str, obj: Any) -> bool:
    return get_access(user).can_on(action, obj)
