"""The one role → action table.

Views, API, templates and later apps ask `role_allows(role, action)` (through `apps.core.access`); nothing else in
the code compares role names. docs/roles.md is generated from this module (`manage.py roles_doc`) and a test checks
that it has not drifted.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    # organisation roles (membership without a project)
    ADMIN = "admin", "Admin (sysadmin)"
    MANAGER = "manager", "Manager (infrastructure manager)"
    SECURITY = "security", "Security admin"
    # project roles
    DESIGNER = "designer", "Designer (application designer)"
    MEMBER = "member", "Member (consumer)"
    VIEWER = "viewer", "Viewer (read-only)"


ORG_ROLES = frozenset({Role.ADMIN, Role.MANAGER, Role.SECURITY})
PROJECT_ROLES = frozenset({Role.DESIGNER, Role.MEMBER, Role.VIEWER})

# action → (description, roles allowed). Org roles apply in every project of their organisation.
A, M, S, D, C, V = Role.ADMIN, Role.MANAGER, Role.SECURITY, Role.DESIGNER, Role.MEMBER, Role.VIEWER
ALL = frozenset(Role)
ACTIONS: dict[str, tuple[str, frozenset[Role]]] = {
    # tenancy
    "org.view": ("See the organisation and its projects", ALL),
    "org.manage": ("Rename the organisation, change its settings", frozenset({A})),
    "projects.view": ("See a project", ALL),
    "projects.manage": ("Create, rename and archive projects", frozenset({A})),
    "members.view": ("See who is a member and with which role", ALL),
    "members.manage": ("Invite, remove members, change roles and expiry", frozenset({A})),
    "tokens.review": ("See and revoke every API token of the organisation", frozenset({A, S})),
    "audit.view": ("Browse the audit trail", frozenset({A, S, M})),
    "audit.export": ("Export the audit trail as CSV", frozenset({A, S})),
    # clouds
    "clouds.view": ("See cloud accounts (never their credentials)", frozenset({A, M, S})),
    "clouds.manage": ("Add, edit, rotate and remove cloud accounts", frozenset({A})),
    "grants.manage": ("Grant cloud accounts and regions to projects", frozenset({A, S})),
    "access.review": ("Run access reviews", frozenset({A, S})),
    # catalog
    "catalog.view": ("Browse the catalog published to a project", ALL),
    "images.view": ("See images, hardware profiles and blueprints", frozenset({A, M, S, D})),
    "images.manage": ("Import, convert and push images; edit profiles and blueprints", frozenset({A, D})),
    "images.approve": ("Approve or revoke images for launch", frozenset({A, S})),
    "catalog.publish": ("Publish catalog items to projects", frozenset({A, D})),
    # deployments
    "deployments.view": ("See deployments and their instances", ALL),
    "deployments.launch": ("Launch deployments", frozenset({A, D, C})),
    "deployments.operate": ("Start, stop, reboot, resize, delete deployments", frozenset({A, D, C})),
    "deployments.approve": ("Approve or reject launch requests", frozenset({A})),
    "quotas.manage": ("Set quotas", frozenset({A})),
    "hooks.manage": ("Configure before- and after-launch hooks", frozenset({A})),
    # usage
    "usage.view": ("See usage and cost reports", frozenset({A, M, S})),
    "usage.export": ("Export chargeback reports", frozenset({A, M})),
    "budgets.manage": ("Set budgets and rate cards", frozenset({A, M})),
    # alerts
    "alerts.view": ("See alerts", ALL),
    "alerts.manage": ("Define alert rules, channels and automated actions", frozenset({A})),
}
del A, M, S, D, C, V


def role_allows(role: str, action: str) -> bool:
    try:
        return role in ACTIONS[action][1]
    except KeyError:
        raise KeyError(f"unknown action {action!r}: add it to apps.core.roles.ACTIONS") from None


def actions_for(role: str) -> frozenset[str]:
    return frozenset(a for a, (_, roles) in ACTIONS.items() if role in roles)


def render_markdown() -> str:
    """docs/roles.md, generated from the table above."""
    order = [Role.ADMIN, Role.MANAGER, Role.SECURITY, Role.DESIGNER, Role.MEMBER, Role.VIEWER]
    lines = [
        "# Roles and what they allow",
        "",
        "Generated from `apps/core/roles.py` by `python manage.py roles_doc --write`; a test fails when this file",
        "and the table differ.",
        "",
        "Organisation roles (`admin`, `manager`, `security`) hold for every project of their organisation.",
        "Project roles (`designer`, `member`, `viewer`) hold in their project only; they also let the member see",
        "organisation-wide rows (hardware profiles, images shared with the organisation) that the same action covers.",
        "A `member` operates the deployments they own; operating somebody else's needs an org role or an explicit",
        "per-object grant. Anything a role cannot see answers 404, exactly like something that does not exist;",
        "something it can see but not change answers 403.",
        "",
        "| action | what it allows | " + " | ".join(r.value for r in order) + " |",
        "|---|---|" + "---|" * len(order),
    ]
    for action, (description, roles) in ACTIONS.items():
        marks = " | ".join("✔" if r in roles else "" for r in order)
        lines.append(f"| `{action}` | {description} | {marks} |")
    lines += ["", "Role names:", ""]
    lines += [f"- `{r.value}` — {r.label}" for r in order]
    return "\n".join(lines) + "\n"
