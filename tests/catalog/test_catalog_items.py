"""Catalog items: the approval gate, publication to projects, who sees what, launch checks, price estimates and a
listing in a fixed number of queries."""

from __future__ import annotations

from decimal import Decimal
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Project
from apps.catalog.blueprints import blueprint_create
from apps.catalog.catalog import (
    catalog_for,
    catalog_item_create,
    catalog_item_delete,
    catalog_item_launch_check,
    catalog_item_publish,
    catalog_item_refresh_price,
    catalog_item_set_enabled,
    catalog_item_unpublish,
    catalog_item_update,
)
from apps.catalog.models import BlueprintVersion, CatalogItem, CatalogPublication, Image, ImageCopy, ImageShare
from apps.clouds.models import CloudGrant, Flavor
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from tests.catalog.test_blueprints import EXAMPLE
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile


@pytest.fixture
def world(acme, web):
    """An approved Debian in web, a pending Ubuntu, two profiles and a simulated cloud with priced flavors."""
    account = make_account(acme, "sim-a")
    make_flavor(account, "s1", 1, 2048, price="0.010")
    make_flavor(account, "m2", 2, 4096, price="0.020")
    other = make_account(acme, "sim-b")
    make_flavor(other, "s1", 1, 2048, price="0.030", override="0.025")
    debian = make_image(web, "Debian", "12")
    ImageCopy.objects.create(organization=acme, image=debian, account=account, region="region-1",
                             state=ImageCopy.State.AVAILABLE, provider_image_id="img-1")
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    return {
        "account": account,
        "other": other,
        "debian": debian,
        "ubuntu": make_image(web, "Ubuntu", "24.04", approval=Image.Approval.PENDING),
        "small": make_profile(acme, "Small", 1, 2048),
        "medium": make_profile(acme, "Medium", 2, 4096),
    }


def item(actor, project, name, image, profile, **kwargs):
    return catalog_item_create(actor=actor, project=project, name=name, kind="image", image=image, profile=profile,
                               **kwargs)


# --- the approval gate ---------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_unapproved_image_cannot_become_an_item(dennis, web, world):
    with pytest.raises(ServiceError) as e:
        item(dennis, web, "Ubuntu box", world["ubuntu"], world["small"], publish_to=[web])
    assert "Image Ubuntu 24.04 is not approved for use: ask a security admin to approve it." in str(e.value)
    assert not CatalogItem.objects.all_tenants().exists()
    assert not CatalogPublication.objects.all_tenants().exists()
    assert not AuditEvent.objects.all_tenants().filter(verb__startswith="catalog_item").exists()


@pytest.mark.django_db
def test_an_approved_image_is_published_and_audited(dennis, web, world, django_capture_on_commit_callbacks):
    with mock.patch("apps.core.events.send_now") as send, django_capture_on_commit_callbacks(execute=True):
        created = item(dennis, web, "Debian box", world["debian"], world["small"], summary="A small Debian",
                       icon="terminal", publish_to=[web])
    assert (created.slug, created.icon, created.kind) == ("debian-box", "terminal", "image")
    assert list(created.publications.values_list("project__slug", flat=True)) == ["web"]
    event = AuditEvent.objects.all_tenants().get(verb="catalog_item.create")
    assert event.project_id == web.pk and event.changes["_"]["published_to"] == ["Web"]
    group, message = send.call_args.args
    assert group == f"catalog.{web.organization_id}"
    assert message == {"type": "catalog.event", "event": "catalog_item", "id": created.pk,
                       "image": world["debian"].pk, "state": "enabled", "progress": 100, "error": ""}


@pytest.mark.django_db
def test_an_image_of_another_project_needs_a_share(dennis, data, web, world):
    with pytest.raises(ServiceError, match="not shared with project Data"):
        item(dennis, data, "Debian in data", world["debian"], world["small"])
    with pytest.raises(ServiceError, match="not shared with project Data"):
        item(dennis, web, "Debian everywhere", world["debian"], world["small"], publish_to=[web, data])
    assert not CatalogItem.objects.all_tenants().exists()
    ImageShare.objects.create(organization_id=web.organization_id, image=world["debian"], project=data)
    assert item(dennis, data, "Debian in data", world["debian"], world["small"]).project == data


@pytest.mark.django_db
def test_a_blueprint_item_needs_every_image_approved(dennis, web, acme, world):
    blueprint = blueprint_create(
        actor=dennis, project=web, name="Mixed",
        source=EXAMPLE.replace("profile: small", "profile: small").replace(
            "    image: Debian 12\n    profile: medium", "    image: Ubuntu 24.04\n    profile: medium"),
    )
    version = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint, number=1)
    with pytest.raises(ServiceError, match="Ubuntu 24.04 is not approved"):
        catalog_item_create(actor=dennis, project=web, name="Mixed app", kind="blueprint", blueprint_version=version)
    assert not CatalogItem.objects.all_tenants().exists()
    Image.objects.all_tenants().filter(pk=world["ubuntu"].pk).update(approval=Image.Approval.APPROVED)
    created = catalog_item_create(actor=dennis, project=web, name="Mixed app", kind="blueprint",
                                  blueprint_version=version, publish_to=[web])
    assert created.blueprint_version == version and created.image is None


@pytest.mark.django_db
def test_a_revoked_image_blocks_launch_and_publication(dennis, web, data, world):
    created = item(dennis, web, "Debian box", world["debian"], world["small"], publish_to=[web])
    assert catalog_item_launch_check(created, project=web) == []
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(approval=Image.Approval.REVOKED)
    created.refresh_from_db()
    created.image.refresh_from_db()
    reasons = catalog_item_launch_check(created, project=web)
    assert reasons == ["Image Debian 12 is not approved for use: ask a security admin to approve it."]
    ImageShare.objects.create(organization_id=web.organization_id, image=world["debian"], project=data)
    with pytest.raises(ServiceError, match="not approved"):
        catalog_item_publish(actor=dennis, item=created, projects=[data])
    assert list(CatalogPublication.objects.all_tenants().values_list("project__slug", flat=True)) == ["web"]


# --- checks on the other fields ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_icon_slug_kind_and_target_projects_are_checked(dennis, connor, web, acme, globex, world):
    with pytest.raises(ServiceError, match="Choose an icon"):
        item(dennis, web, "Odd icon", world["debian"], world["small"], icon="skull")
    item(dennis, web, "Debian box", world["debian"], world["small"])
    with pytest.raises(ServiceError, match="already has a catalog item"):
        item(dennis, web, "debian  box", world["debian"], world["medium"])
    with pytest.raises(ServiceError, match="Choose a hardware profile"):
        item(dennis, web, "No profile", world["debian"], None)
    ops = Project.objects.all_tenants().get(organization=globex, slug="ops")
    with pytest.raises(ServiceError, match="own organisation"):
        item(dennis, web, "Leaky", world["debian"], world["small"], publish_to=[ops])
    archived = Project.objects.create(organization=acme, name="Old", slug="old", is_archived=True)
    with pytest.raises(ServiceError, match="archived"):
        item(dennis, web, "To the past", world["debian"], world["small"], publish_to=[archived])
    with pytest.raises(PermissionDenied):
        item(connor, web, "By a consumer", world["debian"], world["small"])
    assert list(CatalogItem.objects.all_tenants().values_list("slug", flat=True)) == ["debian-box"]


@pytest.mark.django_db
def test_update_publish_unpublish_enable_delete_are_audited(dennis, vera, web, data, world):
    created = item(dennis, web, "Debian box", world["debian"], world["small"], publish_to=[web])
    with pytest.raises(PermissionDenied):
        catalog_item_update(actor=vera, item=created, name="Renamed")
    catalog_item_update(actor=dennis, item=created, name="Debian machine", profile=world["medium"])
    created.refresh_from_db()
    assert (created.name, created.slug, created.profile, created.price_hourly_min) == (
        "Debian machine", "debian-machine", world["medium"], Decimal("0.02"))
    ImageShare.objects.create(organization_id=web.organization_id, image=world["debian"], project=data)
    catalog_item_publish(actor=dennis, item=created, projects=[data])
    catalog_item_unpublish(actor=dennis, item=created, project=web)
    with pytest.raises(ServiceError, match="not published"):
        catalog_item_unpublish(actor=dennis, item=created, project=web)
    catalog_item_set_enabled(actor=dennis, item=created, enabled=False)
    created.refresh_from_db()
    assert created.is_enabled is False
    catalog_item_delete(actor=dennis, item=created)
    assert not CatalogItem.objects.all_tenants().exists()
    verbs = list(AuditEvent.objects.all_tenants().filter(object_type="catalogitem").order_by("pk")
                 .values_list("verb", flat=True))
    assert verbs == ["catalog_item.create", "catalog_item.update", "catalog_item.publish", "catalog_item.unpublish",
                     "catalog_item.disable", "catalog_item.delete"]


# --- launch checks -------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_launch_check_reasons(dennis, web, data, acme, world):
    created = item(dennis, web, "Debian box", world["debian"], world["small"], publish_to=[web])
    assert catalog_item_launch_check(created, project=data) == [
        "Debian box is not published to Data.",
        "Image Debian 12 is not shared with project Data: share it first.",
        "No cloud account is granted to Data.",
    ]
    catalog_item_set_enabled(actor=dennis, item=created, enabled=False)
    created.refresh_from_db()
    assert catalog_item_launch_check(created, project=web) == ["Debian box is disabled."]
    catalog_item_set_enabled(actor=dennis, item=created, enabled=True)
    created.refresh_from_db()
    # web gets only sim-b, where the image has no copy; then only a region without flavors
    CloudGrant.objects.all_tenants().filter(project=web).delete()
    CloudGrant.objects.create(organization=acme, account=world["other"], project=web)
    assert catalog_item_launch_check(created, project=web) == [
        "Image Debian 12 has no copy in sim-b/region-1: push it first."
    ]
    grant = CloudGrant.objects.create(organization=acme, account=world["account"], project=web)
    assert catalog_item_launch_check(created, project=web) == []
    CloudGrant.objects.all_tenants().filter(project=web).delete()
    big = make_profile(acme, "Huge", 64, 262144)
    CloudGrant.objects.create(organization=acme, account=world["account"], project=web)
    catalog_item_update(actor=dennis, item=created, profile=big)
    created.refresh_from_db()
    assert catalog_item_launch_check(created, project=web) == [
        "No cloud granted to Web has a flavor for Huge (x86_64)."
    ]
    assert grant.pk


# --- who sees what -------------------------------------------------------------------------------------------------
@pytest.fixture
def shelves(dennis, web, data, world):
    ImageShare.objects.create(organization_id=web.organization_id, image=world["debian"], project=data)
    for_web = item(dennis, web, "For web", world["debian"], world["small"], publish_to=[web])
    for_data = item(dennis, web, "For data", world["debian"], world["small"], publish_to=[data])
    unpublished = item(dennis, web, "Draft", world["debian"], world["small"])
    disabled = item(dennis, web, "Disabled web", world["debian"], world["small"], publish_to=[web])
    catalog_item_set_enabled(actor=dennis, item=disabled, enabled=False)
    return {"web": for_web, "data": for_data, "draft": unpublished, "disabled": disabled}


def names(qs):
    return sorted(i.name for i in qs)


@pytest.mark.django_db
def test_consumers_see_what_is_published_to_their_projects(connor, vera, mallory, web, data, shelves):
    assert names(catalog_for(connor, project=web)) == ["For web"]
    assert names(catalog_for(connor, project=data)) == ["For data"]
    assert names(catalog_for(connor)) == ["For data", "For web"]
    assert names(catalog_for(vera)) == ["For web"]  # a viewer in web only
    assert names(catalog_for(mallory)) == []
    assert names(catalog_for(mallory, project=web)) == []
    assert names(catalog_for(connor, project=web, search="WEB")) == ["For web"]
    assert names(catalog_for(connor, project=web, search="nothing like it")) == []


@pytest.mark.django_db
def test_disabled_items_stay_visible_to_designers_and_admins(dennis, sam, connor, web, shelves):
    assert names(catalog_for(dennis, project=web)) == ["Disabled web", "For web"]
    assert names(catalog_for(sam)) == ["Disabled web", "Draft", "For data", "For web"]
    assert "Disabled web" not in names(catalog_for(connor))


# --- prices --------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_price_estimate_uses_flavor_prices_and_overrides(dennis, web, world):
    created = item(dennis, web, "Debian box", world["debian"], world["small"])
    assert (created.price_hourly_min, created.price_hourly_max) == (Decimal("0.01"), Decimal("0.025"))
    assert created.price_monthly_max == Decimal("18.25")
    Flavor.objects.all_tenants().filter(account=world["account"], name="s1").update(
        price_override_per_hour=Decimal("0.05"))
    catalog_item_refresh_price(created)
    created.refresh_from_db()
    assert (created.price_hourly_min, created.price_hourly_max) == (Decimal("0.025"), Decimal("0.05"))


@pytest.mark.django_db
def test_blueprint_price_estimate_is_the_preview_total(dennis, web, world):
    blueprint = blueprint_create(actor=dennis, project=web, name="Two tier", source=EXAMPLE)
    version = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint)
    created = catalog_item_create(actor=dennis, project=web, name="Two tier app", kind="blueprint",
                                  blueprint_version=version)
    # two web (small) spread over sim-a (0.010) and sim-b (0.025) + one db (medium) on sim-a (0.020)
    assert created.price_hourly_min == Decimal("0.055")
    # dearest: two web on sim-b (0.025) + db on the only medium flavor (0.020)
    assert created.price_hourly_max == Decimal("0.07")


@pytest.mark.django_db
def test_catalog_listing_takes_a_constant_number_of_queries(dennis, connor, web, world):
    def listing(user) -> int:
        with CaptureQueriesContext(connection) as ctx:
            for i in catalog_for(user, project=web):
                _ = (i.image.name, i.profile.name, i.project.name, [p.project.name for p in i.publications.all()])
        return len(ctx.captured_queries)

    for n in range(3):
        item(dennis, web, f"Item {n}", world["debian"], world["small"], publish_to=[web])
    listing(connor)  # the first call of a request loads the user's memberships
    few = {u.username: listing(u) for u in (dennis, connor)}
    for n in range(3, 12):
        item(dennis, web, f"Item {n}", world["debian"], world["small"], publish_to=[web])
    many = {u.username: listing(u) for u in (dennis, connor)}
    assert few == many
    assert max(many.values()) <= 3
    assert len(list(catalog_for(connor, project=web))) == 12


@pytest.mark.django_db
def test_a_blueprint_item_launch_check_follows_approval_and_placement(dennis, web, world):
    blueprint = blueprint_create(actor=dennis, project=web, name="Two tier", source=EXAMPLE)
    version = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint)
    created = catalog_item_create(actor=dennis, project=web, name="Two tier app", kind="blueprint",
                                  blueprint_version=version, publish_to=[web])
    assert catalog_item_launch_check(created, project=web) == []  # web has sim-a, where Debian has a copy
    ImageCopy.objects.all_tenants().filter(image=world["debian"]).delete()
    assert catalog_item_launch_check(created, project=web) == [
        "Image Debian 12 has no copy in sim-a/region-1: push it first."
    ]
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(approval=Image.Approval.REVOKED)
    reasons = catalog_item_launch_check(created, project=web)
    assert reasons[0] == "Image Debian 12 is not approved for use: ask a security admin to approve it."
    with pytest.raises(ServiceError, match="not approved"):
        catalog_item_publish(actor=dennis, item=created, projects=[web])


@pytest.mark.django_db
def test_a_revoked_image_blocks_content_changes_not_text_fixes(dennis, web, world):
    created = item(dennis, web, "Debian box", world["debian"], world["small"], publish_to=[web])
    with pytest.raises(ServiceError, match="Ubuntu 24.04 is not approved"):
        catalog_item_update(actor=dennis, item=created, image=world["ubuntu"])
    created.refresh_from_db()
    assert created.image == world["debian"]
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(approval=Image.Approval.REVOKED)
    created = CatalogItem.objects.all_tenants().get(pk=created.pk)
    catalog_item_update(actor=dennis, item=created, name="Debian box (old)", image=created.image,
                        profile=created.profile)
    created.refresh_from_db()
    assert created.name == "Debian box (old)"
    catalog_item_set_enabled(actor=dennis, item=created, enabled=False)
    with pytest.raises(ServiceError, match="not approved"):
        catalog_item_set_enabled(actor=dennis, item=created, enabled=True)
    created.refresh_from_db()
    assert created.is_enabled is False


def test_periodic_refresh_follows_a_sysadmin_price_change(dennis, acme, web):
    """Estimates follow flavor prices: the sysadmin's override reaches the item at the next periodic refresh."""
    from apps.catalog.tasks import catalog_prices_refresh

    account = make_account(acme, "price-cloud")
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    flavor = make_flavor(account, "p-small", 1, 2048, price="0.10000")
    image = make_image(web, "Priced", "1")
    profile = make_profile(acme, "p1", 1, 2048)
    item = catalog_item_create(actor=dennis, project=web, name="Priced", kind="image", image=image,
                                       profile=profile, publish_to=[web])
    assert item.price_hourly_min == Decimal("0.10000")
    assert catalog_prices_refresh() == 0  # nothing changed: nothing written
    Flavor.objects.all_tenants().filter(pk=flavor.pk).update(price_override_per_hour=Decimal("0.05"))
    assert catalog_prices_refresh() == 1
    item.refresh_from_db()
    assert (item.price_hourly_min, item.price_hourly_max) == (Decimal("0.05000"), Decimal("0.05000"))
