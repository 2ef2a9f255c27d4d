"""The demo world: Acme and Globex and one user per persona. Idempotent; later apps extend it."""

from __future__ import annotations

from django.db import transaction

from apps.accounts import services
from apps.accounts.models import Membership, Organization, Project, User
from apps.core.roles import Role

DEMO_PASSWORD = "skyport-demo"

# username → (full name, [(org slug, project slug or None, role)])
DEMO_USERS: dict[str, tuple[str, list[tuple[str, str | None, str]]]] = {
    "sam": ("Sam Sysadmin", [("acme", None, Role.ADMIN)]),
    "marty": ("Marty Manager", [("acme", None, Role.MANAGER)]),
    "sarah": ("Sarah Security", [("acme", None, Role.SECURITY)]),
    "dennis": ("Dennis Designer", [("acme", "web", Role.DESIGNER), ("acme", "data", Role.DESIGNER)]),
    "connor": ("Connor Consumer", [("acme", "web", Role.MEMBER), ("acme", "data", Role.MEMBER)]),
    "vera": ("Vera Viewer", [("acme", "web", Role.VIEWER)]),
    "mallory": ("Mallory Globex", [("globex", None, Role.ADMIN)]),
}
DEMO_ORGS = {"acme": ("Acme", ["web", "data"]), "globex": ("Globex", ["ops"])}


@transaction.atomic
def seed_accounts(password: str = DEMO_PASSWORD) -> dict[str, User]:
    users: dict[str, User] = {}
    for username, (full_name, _) in DEMO_USERS.items():
        first, _, last = full_name.partition(" ")
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"email": f"{username}@{'globex' if username == 'mallory' else 'acme'}.example",
                      "first_name": first, "last_name": last},
        )
        if created:
            user.set_password(password)
            user.save()
        users[username] = user
    orgs: dict[str, Organization] = {}
    projects: dict[tuple[str, str], Project] = {}
    for slug, (name, project_slugs) in DEMO_ORGS.items():
        org = Organization.objects.all_tenants().filter(slug=slug).first()
        if org is None:
            org = services.organization_create(actor=None, name=name, slug=slug)
        orgs[slug] = org
        for pslug in project_slugs:
            project = Project.objects.all_tenants().filter(organization=org, slug=pslug).first()
            if project is None:
                project = services.project_create(actor=None, organization=org, name=pslug.title(), slug=pslug)
            projects[(slug, pslug)] = project
    for username, (_, grants) in DEMO_USERS.items():
        for org_slug, project_slug, role in grants:
            project = projects[(org_slug, project_slug)] if project_slug else None
            exists = Membership.objects.all_tenants().filter(
                user=users[username], organization=orgs[org_slug], project=project
            )
            if project is None:
                exists = exists.filter(role=role)
            if not exists.exists():
                services.membership_create(
                    actor=None, user=users[username], organization=orgs[org_slug], project=project, role=role
                )
    return users
