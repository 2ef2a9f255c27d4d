"""Every route registered on the API router, walked generically: an outsider gets 404 (never 403, never
data), a read-only viewer cannot write, and nothing changes. A new route fails
`test_every_route_has_a_sample` until it is described here."""

from __future__ import annotations

import pytest
from django.forms.models import model_to_dict

from apps.accounts import services
from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project
from apps.catalog.models import (
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.core.models import AuditEvent
from portal.api_urls import router
from tests.catalog.walk import catalog_world
from tests.deployments.walk_api import isolation_samples


def _membership(ctx):
    return Membership.objects.all_tenants().get(user=ctx["vera"], project=ctx["web"])


def _invitation(ctx):
    invitation, _ = services.invitation_create(
        actor=ctx["sam"],
        organization=ctx["acme"],
        project=ctx["web"],
        email="new@acme.example",
        role="viewer",
    )
    return invitation


def _token(ctx):
    token, _ = services.token_create(actor=ctx["connor"], organization=ctx["acme"], name="ci", scope="write")
    return token


def _audit_event(ctx):
    return AuditEvent.objects.all_tenants().filter(organization=ctx["acme"], project=ctx["web"]).first()


def _notification(ctx):
    return services.notification_send(
        recipient=ctx["connor"], organization_id=ctx["acme"].pk, text="Build done"
    )


def _cloud_account(ctx):
    account = CloudAccount.objects.all_tenants().filter(organization=ctx["acme"], slug="iso").first()
    if account is None:
        account = CloudAccount(organization=ctx["acme"], name="Acme iso", slug="iso", kind="sim",
                               regions=["region-1"], default_region="region-1")
        account.set_credentials({"api_key": "iso-key-12345678"}, secret_field="api_key")
        account.save()
    return account


def _synced(model, **fields):
    def make(ctx):
        account = _cloud_account(ctx)
        return model.objects.create(organization=ctx["acme"], account=account, region="region-1", provider_id="x",
                                    name="Acme row", **fields)

    return make


def _cloud_grant(ctx):
    return CloudGrant.objects.create(organization=ctx["acme"], account=_cloud_account(ctx), project=ctx["web"])


def _catalog(key):
    def make(ctx):
        data = Project.objects.all_tenants().get(organization=ctx["acme"], slug="data")
        return catalog_world("Acme", ctx["acme"], ctx["web"], data, _cloud_account(ctx))[key]

    return make


# basename → (model, factory of an Acme row, payload a viewer may not create, payload for PATCH)
SAMPLES = {
    "organization": (Organization, lambda ctx: ctx["acme"], None, {"name": "Hacked"}),
    "project": (
        Project,
        lambda ctx: ctx["web"],
        lambda ctx: {"organization": ctx["acme"].pk, "name": "X"},
        {"name": "Hacked"},
    ),
    "membership": (
        Membership,
        _membership,
        lambda ctx: {"user": "vera", "project": ctx["web"].pk, "role": "member"},
        {"role": "member"},
    ),
    "invitation": (
        Invitation,
        _invitation,
        lambda ctx: {"project": ctx["web"].pk, "email": "x@example.com", "role": "viewer"},
        {},
    ),
    "token": (ApiToken, _token, None, {"name": "Hacked"}),
    "audit-event": (AuditEvent, _audit_event, None, {"verb": "x"}),
    "notification": (Notification, _notification, None, {"text": "x"}),
    # cloud rows: creating them needs rights a viewer's scoped fields do not reach (a 400); the route walk
    # (tests/test_route_walk.py) covers those posts
    "cloud-account": (CloudAccount, _cloud_account, None, {"name": "Hacked"}),
    "cloud-grant": (CloudGrant, _cloud_grant, None, {}),
    "flavor": (Flavor, _synced(Flavor, vcpus=1, ram_mb=512), None, {"price_override_per_hour": "9"}),
    "cloud-image": (CloudImage, _synced(CloudImage), None, {}),
    "network": (Network, _synced(Network), None, {}),
    # catalog rows: the route walk covers the creating posts and the actions
    "image": (Image, _catalog("image"), None, {"name": "Hacked"}),
    "image-copy": (ImageCopy, _catalog("image_copy"), None, {}),
    "image-share": (ImageShare, _catalog("image_share"), None, {}),
    "hardware-profile": (HardwareProfile, _catalog("hardware_profile"), None, {"name": "Hacked"}),
    "blueprint": (Blueprint, _catalog("blueprint"), None, {"name": "Hacked"}),
    "blueprint-version": (BlueprintVersion, _catalog("blueprint_version"), None, {}),
    "catalog-item": (CatalogItem, _catalog("catalog_item"), None, {"name": "Hacked"}),
    **isolation_samples(),
}


def test_every_route_has_a_sample():
    assert {basename for _, _, basename in router.registry} == set(SAMPLES)


def _allowed(basename: str) -> set[str]:
    viewset = next(v for _, v, b in router.registry if b == basename)
    methods = {
        m
        for m in viewset.http_method_names
        if hasattr(viewset, {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}.get(m, m))
    }
    return methods


def _state(model, pk):
    return model_to_dict(model.objects.all_tenants().get(pk=pk))


@pytest.fixture
def ctx(sam, vera, connor, mallory, acme, web):
    return {"sam": sam, "vera": vera, "connor": connor, "mallory": mallory, "acme": acme, "web": web}


@pytest.mark.django_db
@pytest.mark.parametrize("basename", sorted(SAMPLES))
def test_outsider_gets_404_and_changes_nothing(api, ctx, basename):
    model, factory, create_payload, patch = SAMPLES[basename]
    obj = factory(ctx)
    before, total = _state(model, obj.pk), model.objects.all_tenants().count()
    client = api(ctx["mallory"])
    url = f"/api/v1/{dict((b, p) for p, _, b in router.registry)[basename]}/{obj.pk}/"

    assert client.get(url).status_code == 404
    response = client.patch(url, patch, format="json")
    assert response.status_code == (404 if "patch" in _allowed(basename) else 405)
    response = client.delete(url)
    assert response.status_code == (404 if "delete" in _allowed(basename) else 405)
    assert b"Acme" not in response.content

    assert _state(model, obj.pk) == before
    assert model.objects.all_tenants().count() == total


@pytest.mark.django_db
@pytest.mark.parametrize("basename", sorted(SAMPLES))
def test_viewer_cannot_write(api, ctx, basename):
    model, factory, create_payload, patch = SAMPLES[basename]
    obj = factory(ctx)
    before, total = _state(model, obj.pk), model.objects.all_tenants().count()
    client = api(ctx["vera"])
    prefix = dict((b, p) for p, _, b in router.registry)[basename]
    url = f"/api/v1/{prefix}/{obj.pk}/"
    visible = client.get(url).status_code == 200

    for method in ("patch", "delete"):
        response = getattr(client, method)(url, patch, format="json")
        if method not in _allowed(basename):
            assert response.status_code == 405
        else:
            # visible but not hers to change → 403; out of her reach → 404
            assert response.status_code == (403 if visible else 404), (method, response.content)
    if create_payload is not None:
        response = client.post(f"/api/v1/{prefix}/", create_payload(ctx), format="json")
        assert response.status_code == 403, response.content

    assert _state(model, obj.pk) == before
    assert model.objects.all_tenants().count() == total


@pytest.mark.django_db
@pytest.mark.parametrize("basename", ["project", "membership", "invitation", "token"])
def test_read_only_token_cannot_write(ctx, token_api, basename):
    model, factory, _, patch = SAMPLES[basename]
    obj = factory(ctx)
    client, _, _ = token_api(ctx["sam"], ctx["acme"], scope="read")
    prefix = dict((b, p) for p, _, b in router.registry)[basename]
    total = model.objects.all_tenants().count()
    before = _state(model, obj.pk)

    assert client.get(f"/api/v1/{prefix}/").status_code == 200
    response = client.post(f"/api/v1/{prefix}/", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert "read-only" in response.json()["error"]["message"]
    assert client.delete(f"/api/v1/{prefix}/{obj.pk}/").status_code == 403

    assert model.objects.all_tenants().count() == total
    assert _state(model, obj.pk) == before


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", [p for p, _, _ in router.registry] + ["me"])
def test_anonymous_gets_401(api, personas, prefix):
    response = api().get(f"/api/v1/{prefix}/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
