"""Persona home pages: which home a role opens. A person with several roles sees the union, in this order."""

from __future__ import annotations

from dataclasses import dataclass

from apps.core.access import Access
from apps.core.roles import Role


@dataclass(frozen=True)
class Persona:
    slug: str
    label: str
    roles: frozenset[str]
    description: str


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "sysadmin", "Sysadmin", frozenset({Role.ADMIN}), "Projects, members, invitations and recent activity"
    ),
    Persona("infrastructure", "Infrastructure", frozenset({Role.MANAGER}), "Projects, roles, usage and cost"),
    Persona(
        "security", "Security", frozenset({Role.SECURITY}), "Audit trail, API tokens and expiring access"
    ),
    Persona("designer", "Designer", frozenset({Role.DESIGNER}), "Images, blueprints and the catalog"),
    # a viewer gets the consumer home too, read-only: the page asks the role table what may be launched
    Persona(
        "consumer", "Consumer", frozenset({Role.MEMBER, Role.VIEWER}), "Projects, deployments and tokens"
    ),
)
PERSONAS_BY_SLUG = {p.slug: p for p in PERSONAS}


def personas_for(access: Access, organization_id: int | None) -> list[Persona]:
    """The persona homes the user has in this organisation (live memberships only)."""
    if organization_id is None:
        return []
    roles = access.roles_in(organization_id)
    return [p for p in PERSONAS if p.roles & roles]
