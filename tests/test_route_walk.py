"""The generated isolation walk: every URL pattern of the project — pages, the API router with its extra actions,
exports — is listed here with the rows it is about, or excluded with a reason. For each route:

- mallory (admin of Globex only) never sees an Acme row: object routes answer 404 to every method and change
  nothing; list routes do not contain any Acme row (its marker text);
- vera (viewer in web) cannot write: every write answers 403/404 (or re-renders with an error) and changes nothing;
- a role that is allowed gets its answer, and lists show the Acme rows (so the walk could fail).

A new route fails `test_every_route_is_walked` until it is described in ROUTES or EXCLUDED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from django.forms.models import model_to_dict
from django.urls import URLPattern, URLResolver, get_resolver

from apps.accounts import services
from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.core.models import AuditEvent
from tests.catalog.walk import CATALOG_MODELS, catalog_routes, catalog_world
from tests.deployments import walk_api as deployments_api
from tests.deployments.walk_pages import DEPLOYMENT_MODELS, deployments_world
from tests.deployments.walk_pages import ROUTES as DEPLOYMENT_PAGE_ROUTES

MARK = "ACMEMARK"
TENANT_MODELS = (Organization, Project, Membership, Invitation, ApiToken, Notification, AuditEvent, CloudAccount,
                 CloudGrant, Flavor, CloudImage, Network, *CATALOG_MODELS, *DEPLOYMENT_MODELS,
                 *deployments_api.API_MODELS)


def all_routes() -> dict[str, str]:
    """name → route pattern text, for every named URL of the project (format-suffix twins left out)."""
    found: dict[str, str] = {}

    def walk(patterns: list[Any], prefix: str, namespace: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
                walk(p.url_patterns, prefix + str(p.pattern), ns)
            elif isinstance(p, URLPattern) and p.name and not _is_format_suffix(str(p.pattern)):
                found[namespace + p.name] = prefix + str(p.pattern)

    walk(get_resolver().url_patterns, "", "")
    return found


@dataclass
class Route:
    obj: str | None = None  # key of an Acme row in the world fixture; None for routes without an object
    methods: tuple[str, ...] = ("get",)  # methods the route answers
    allowed: str = "sam"  # who gets a success
    ok: tuple[int, ...] = (200,)
    kwargs: dict[str, Any] = field(default_factory=dict)
    shows_marker: bool = False  # an allowed GET lists Acme rows carrying the marker


# Every route of the project. Object routes name the Acme row their <pk> points at.
ROUTES: dict[str, Route] = {
    # pages
    "core:home": Route(ok=(302,)),
    "core:persona": Route(kwargs={"persona": "sysadmin"}),
    "core:org-switch": Route(methods=("post",), ok=(302,)),
    "core:project-switch": Route(methods=("post",), ok=(302,)),
    "core:members": Route(shows_marker=True),
    "core:member-add": Route(methods=("post",), ok=(200, 302)),
    "core:member-edit": Route(obj="membership", methods=("get", "post")),
    "core:member-row": Route(obj="membership"),
    "core:member-remove": Route(obj="membership", methods=("post",), ok=(200, 302)),
    "core:invite": Route(methods=("post",), ok=(200, 302)),
    "core:invitation-revoke": Route(obj="invitation", methods=("post",), ok=(200, 302)),
    "core:tokens": Route(allowed="sarah", shows_marker=True),
    "core:token-create": Route(methods=("post",), ok=(200, 302)),
    "core:token-revoke": Route(obj="token", methods=("post",), allowed="connor", ok=(200, 302)),
    "core:notifications": Route(allowed="connor", shows_marker=True),
    "core:notifications-read": Route(methods=("post",), allowed="connor", ok=(200, 302)),
    "core:audit": Route(allowed="sarah", shows_marker=True),
    "core:audit-export": Route(allowed="sarah", shows_marker=True),
    "accounts:password-change": Route(),
    "clouds:accounts": Route(shows_marker=True),
    "clouds:account-add": Route(methods=("get", "post"), ok=(200,)),
    "clouds:account-detail": Route(obj="cloud_account", shows_marker=True),
    "clouds:account-edit": Route(obj="cloud_account", methods=("post",), ok=(200, 302, 400)),
    "clouds:account-rotate": Route(obj="cloud_account", methods=("post",), ok=(200, 302, 400)),
    "clouds:account-sync": Route(obj="cloud_account", methods=("post",), ok=(302,)),
    "clouds:account-deactivate": Route(obj="cloud_account", methods=("post",), ok=(302,)),
    "clouds:flavor-price": Route(obj="flavor", methods=("post",), ok=(302,)),
    "clouds:grants": Route(methods=("get", "post"), shows_marker=True),
    "clouds:grant-revoke": Route(obj="cloud_grant", methods=("post",), ok=(302,)),
    "clouds:access-review": Route(allowed="sarah", shows_marker=True),
    "clouds:access-review-export": Route(allowed="sarah", shows_marker=True),
    # API
    "api:api-root": Route(),
    "api:me": Route(),
    "api:organization-list": Route(shows_marker=True),
    "api:organization-detail": Route(obj="organization", methods=("get", "patch")),
    "api:project-list": Route(methods=("get", "post"), shows_marker=True),
    "api:project-detail": Route(obj="project", methods=("get", "patch")),
    "api:membership-list": Route(methods=("get", "post")),
    "api:membership-detail": Route(obj="membership", methods=("get", "patch", "delete")),
    "api:invitation-list": Route(methods=("get", "post"), shows_marker=True),
    "api:invitation-detail": Route(obj="invitation", methods=("get", "delete")),
    "api:invitation-accept": Route(methods=("post",), ok=(200, 201)),
    "api:token-list": Route(methods=("get", "post"), allowed="sarah", shows_marker=True),
    "api:token-detail": Route(obj="token", methods=("get", "delete"), allowed="connor"),
    "api:audit-event-list": Route(allowed="sarah", shows_marker=True),
    "api:audit-event-detail": Route(obj="audit", allowed="sarah"),
    "api:audit-event-export": Route(allowed="sarah", shows_marker=True),
    "api:notification-list": Route(allowed="connor", shows_marker=True),
    "api:notification-detail": Route(obj="notification", allowed="connor"),
    "api:notification-mark-read": Route(methods=("post",), allowed="connor"),
    "api:cloud-account-list": Route(methods=("get", "post"), shows_marker=True),
    "api:cloud-account-detail": Route(obj="cloud_account", methods=("get", "patch", "delete")),
    "api:cloud-account-sync": Route(obj="cloud_account", methods=("post",)),
    "api:cloud-account-health": Route(obj="cloud_account"),
    "api:cloud-account-rotate-credentials": Route(obj="cloud_account", methods=("post",)),
    "api:cloud-grant-list": Route(methods=("get", "post"), shows_marker=True),
    "api:cloud-grant-detail": Route(obj="cloud_grant", methods=("get", "delete")),
    "api:flavor-list": Route(shows_marker=True),
    "api:flavor-detail": Route(obj="flavor", methods=("get", "patch")),
    "api:cloud-image-list": Route(shows_marker=True),
    "api:cloud-image-detail": Route(obj="cloud_image"),
    "api:network-list": Route(shows_marker=True),
    "api:network-detail": Route(obj="network"),
}

ROUTES.update({name: Route(**kwargs) for name, kwargs in catalog_routes().items()})
ROUTES.update({name: Route(**kwargs) for name, kwargs in DEPLOYMENT_PAGE_ROUTES.items()})
ROUTES.update({name: Route(**kwargs) for name, kwargs in deployments_api.ROUTES.items()})

EXCLUDED: dict[str, str] = {
    "accounts:login": "public sign-in page; covered by tests/pages/test_auth.py",
    "accounts:logout": "ends the caller's own session only",
    "accounts:invitation-accept": "addressed by an unguessable secret, not a pk; tests/pages/test_invitations.py",
    "api:schema": "public description of the API, no tenant data",
    "api:docs": "public Swagger UI, no tenant data",
    "healthz": "liveness probe: no tenant data, no database; tests/core/test_health.py",
    "readyz": "readiness probe: component states only, no tenant data; tests/core/test_health.py",
    "demo-hook-name-policy": "hook receiver authenticated by the HMAC signature of a hook pointing at it, no "
                             "session; tests/deployments/test_hooks.py",
    "api:api-root": "",  # listed in ROUTES; never both (checked)
}
EXCLUDED.pop("api:api-root")


def _is_format_suffix(pattern: str) -> bool:
    return "<drf_format_suffix" in pattern or "(?P<format>" in pattern


@pytest.fixture
def world(personas, acme, web, data, sam, connor, vera):
    """Acme rows that carry the marker, one of each kind a route can point at."""
    services.project_update(actor=sam, project=web, description=f"{MARK} project")
    invitation, _ = services.invitation_create(
        actor=sam, organization=acme, project=web, email=f"{MARK.lower()}@acme.example", role="viewer"
    )
    token, _ = services.token_create(actor=connor, organization=acme, name=f"{MARK} token", scope="write")
    note = services.notification_send(recipient=connor, organization_id=acme.pk, text=f"{MARK} note")
    Organization.objects.all_tenants().filter(pk=acme.pk).update(name=f"Acme {MARK}")
    acme.refresh_from_db()
    cloud = _acme_cloud(acme, web)
    catalog = catalog_world(MARK, acme, web, data, cloud["cloud_account"])
    deployments = deployments_world(MARK, acme, web, cloud["cloud_account"], connor)
    return {
        **cloud,
        **catalog,
        **deployments,
        **deployments_api.api_world(MARK, deployments),
        "organization": acme,
        "project": web,
        "membership": Membership.objects.all_tenants().get(user=vera, project=web),
        "invitation": invitation,
        "token": token,
        "notification": note,
        "audit": AuditEvent.objects.all_tenants().filter(organization=acme, object_label__contains=MARK).first(),
    }


def _acme_cloud(acme: Organization, web: Project) -> dict[str, Any]:
    """Acme cloud rows carrying the marker (rows only: the walk never reaches a provider)."""
    account = CloudAccount(organization=acme, name=f"{MARK} cloud", slug="acmemark-cloud", kind="sim",
                           regions=["region-1"], default_region="region-1")
    account.set_credentials({"api_key": "walk-key-12345678"}, secret_field="api_key")
    account.save()
    common = {"organization": acme, "account": account, "region": "region-1"}
    return {
        "cloud_account": account,
        "cloud_grant": CloudGrant.objects.create(organization=acme, account=account, project=web),
        "flavor": Flavor.objects.create(**common, provider_id="f1", name=f"{MARK} flavor", vcpus=1, ram_mb=512),
        "cloud_image": CloudImage.objects.create(**common, provider_id="i1", name=f"{MARK} image"),
        "network": Network.objects.create(**common, provider_id="n1", name=f"{MARK} net"),
    }


def _url(name: str, route: Route, world: dict[str, Any]) -> str:
    from django.urls import reverse

    kwargs = dict(route.kwargs)
    if route.obj:
        kwargs["pk"] = world[route.obj].pk
    return reverse(name, kwargs=kwargs or None)


def _snapshot() -> dict[str, Any]:
    """Every Acme row (an outsider's own audit trail may grow: their exports are audited in their organisation)."""
    acme = Organization.objects.all_tenants().get(slug="acme")

    def rows(model):
        qs = model.objects.all_tenants()
        return qs.filter(pk=acme.pk) if model is Organization else qs.filter(organization=acme)

    return {
        m.__name__: sorted(tuple(sorted((k, str(v)) for k, v in model_to_dict(row).items())) for row in rows(m))
        for m in TENANT_MODELS
    }


def _call(client, method: str, url: str):
    if method == "get":
        return client.get(url)
    return getattr(client, method)(url, {}, content_type="application/json" if "/api/" in url else None) \
        if method != "post" or "/api/" in url else client.post(url, {})


def _body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def test_every_route_is_walked():
    routes = all_routes()
    names = set(routes)
    assert not set(ROUTES) & set(EXCLUDED), "a route is either walked or excluded"
    missing = names - set(ROUTES) - set(EXCLUDED)
    assert not missing, f"routes not covered by the isolation walk: {sorted(missing)}"
    stale = (set(ROUTES) | set(EXCLUDED)) - names
    assert not stale, f"described routes that no longer exist: {sorted(stale)}"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_outsider_sees_nothing_and_changes_nothing(client, world, mallory, name):
    route = ROUTES[name]
    url = _url(name, route, world)
    client.force_login(mallory)
    before = _snapshot()
    for method in route.methods:
        response = _call(client, method, url)
        if route.obj:
            assert response.status_code == 404, (method, response.status_code)
        body = _body(response)
        assert MARK not in body and MARK.lower() not in body, (method, body[:300])
    assert _snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if set(r.methods) - {"get"}))
def test_viewer_cannot_write(client, world, vera, name):
    route = ROUTES[name]
    url = _url(name, route, world)
    client.force_login(vera)
    before = _snapshot()
    for method in set(route.methods) - {"get"}:
        response = _call(client, method, url)
        # switching context and marking her own notifications are hers to do; everything else is refused
        if name in {"core:org-switch", "core:project-switch", "core:notifications-read",
                    "api:notification-mark-read", "core:token-create", "api:invitation-accept"}:
            continue
        assert response.status_code in (400, 403, 404), (method, response.status_code, _body(response)[:300])
    after = _snapshot()
    if name not in {"core:token-create"}:
        assert after == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if "get" in r.methods))
def test_allowed_role_gets_an_answer(client, world, personas, name):
    route = ROUTES[name]
    url = _url(name, route, world)
    client.force_login(personas[route.allowed])
    response = client.get(url)
    assert response.status_code in route.ok, (response.status_code, _body(response)[:300])
    if route.shows_marker:
        body = _body(response)
        assert MARK in body or MARK.lower() in body, body[:500]
