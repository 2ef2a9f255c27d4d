"""Hardware profiles: the services (rights, slugs, refusals, audit) and the mapping to the best flavor of every
account-region (size, architecture, price, override, grants) in a fixed number of queries."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.models import CatalogItem, HardwareProfile, Image
from apps.catalog.profiles import (
    flavor_price,
    launch_world,
    profile_create,
    profile_delete,
    profile_mapping,
    profile_mappings,
    profile_update,
)
from apps.clouds.models import CloudAccount, CloudGrant, Flavor
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError


# --- rows used by the catalog tests (created directly: no provider is reached) -------------------------------------
def make_account(org: Any, name: str, *, kind: str = "sim", regions: list[str] | None = None,
                 is_active: bool = True) -> CloudAccount:
    regions = regions or ["region-1"]
    account = CloudAccount(organization=org, name=name, slug=name, kind=kind, regions=regions,
                           default_region=regions[0], is_active=is_active)
    account.set_credentials({"api_key": "test-key-12345678"}, secret_field="api_key")
    account.save()
    return account


def make_flavor(account: CloudAccount, name: str, vcpus: int, ram_mb: int, *, region: str | None = None,
                arch: str = "x86_64", price: str | None = None, override: str | None = None, disk_gb: int = 0,
                gpus: int = 0, is_active: bool = True, provider_id: str | None = None) -> Flavor:
    return Flavor.objects.create(
        organization_id=account.organization_id, account=account, region=region or account.all_regions[0],
        provider_id=provider_id or f"{account.slug}-{name}-{region or ''}", name=name, vcpus=vcpus, ram_mb=ram_mb,
        disk_gb=disk_gb, arch=arch, gpus=gpus, is_active=is_active,
        provider_price_per_hour=Decimal(price) if price is not None else None,
        price_override_per_hour=Decimal(override) if override is not None else None,
    )


def make_profile(org: Any, name: str, vcpus: int, ram_mb: int, **kwargs: Any) -> HardwareProfile:
    from django.utils.text import slugify

    return HardwareProfile.objects.create(organization=org, name=name, slug=slugify(name), vcpus=vcpus,
                                          ram_mb=ram_mb, **kwargs)


def make_image(project: Any, name: str, version: str = "", *, arch: str = "x86_64",
               approval: str = Image.Approval.APPROVED, **kwargs: Any) -> Image:
    return Image.objects.create(
        organization_id=project.organization_id, project=project, name=name, version=version, arch=arch,
        source=Image.Source.UPLOAD, state=Image.State.READY, disk_format="qcow2", approval=approval, **kwargs,
    )


def fit_for(fits: list[Any], account: CloudAccount, region: str | None = None) -> Any:
    region = region or account.all_regions[0]
    return next(f for f in fits if f.account.pk == account.pk and f.region == region)


# --- services ------------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_designer_creates_a_profile_with_a_slug_and_an_audit_event(dennis, acme):
    profile = profile_create(actor=dennis, organization=acme, name="Large Memory", vcpus=4, ram_mb=32768,
                             disk_gb=100, description="for caches")
    assert (profile.slug, profile.vcpus, profile.ram_mb, profile.disk_gb) == ("large-memory", 4, 32768, 100)
    event = AuditEvent.objects.all_tenants().get(verb="hardware_profile.create", object_id=str(profile.pk))
    assert event.organization_id == acme.pk and event.actor == dennis
    assert event.changes["ram_mb"] == {"from": None, "to": 32768}


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["connor", "vera", "marty", "mallory"])
def test_who_may_not_create_profiles_creates_nothing(request, acme, who):
    user = request.getfixturevalue(who)
    with pytest.raises(PermissionDenied):
        profile_create(actor=user, organization=acme, name="sneaky", vcpus=1, ram_mb=512)
    assert not HardwareProfile.objects.all_tenants().filter(slug="sneaky").exists()
    assert not AuditEvent.objects.all_tenants().filter(verb="hardware_profile.create").exists()


@pytest.mark.django_db
def test_profile_values_and_names_are_checked(sam, acme):
    profile_create(actor=sam, organization=acme, name="Small", vcpus=1, ram_mb=2048)
    with pytest.raises(ServiceError, match="already has a profile"):
        profile_create(actor=sam, organization=acme, name="small", vcpus=2, ram_mb=2048)
    with pytest.raises(ServiceError, match="between 1 and 512"):
        profile_create(actor=sam, organization=acme, name="Zero", vcpus=0, ram_mb=2048)
    with pytest.raises(ServiceError, match="whole number"):
        profile_create(actor=sam, organization=acme, name="Text", vcpus="many", ram_mb=2048)
    with pytest.raises(ServiceError, match="between 128"):
        profile_create(actor=sam, organization=acme, name="Tiny", vcpus=1, ram_mb=64)
    assert list(HardwareProfile.objects.all_tenants().filter(organization=acme).values_list("slug", flat=True)) == [
        "small"
    ]


@pytest.mark.django_db
def test_update_keeps_the_slug_and_audits_the_change(dennis, vera, acme):
    profile = profile_create(actor=dennis, organization=acme, name="Medium", vcpus=2, ram_mb=4096)
    with pytest.raises(PermissionDenied):
        profile_update(actor=vera, profile=profile, vcpus=64)
    profile.refresh_from_db()
    assert profile.vcpus == 2
    profile_update(actor=dennis, profile=profile, name="Medium plus", vcpus=4)
    profile.refresh_from_db()
    assert (profile.name, profile.slug, profile.vcpus) == ("Medium plus", "medium", 4)
    event = AuditEvent.objects.all_tenants().get(verb="hardware_profile.update")
    assert event.changes["vcpus"] == {"from": 2, "to": 4}


@pytest.mark.django_db
def test_delete_is_refused_while_a_catalog_item_uses_the_profile(dennis, acme, web):
    used = make_profile(acme, "Used", 1, 1024)
    image = make_image(web, "Debian", "12")
    CatalogItem.objects.create(organization=acme, project=web, name="Web box", slug="web-box", kind="image",
                               image=image, profile=used)
    with pytest.raises(ServiceError, match="Web box"):
        profile_delete(actor=dennis, profile=used)
    assert HardwareProfile.objects.all_tenants().filter(pk=used.pk).exists()
    spare = make_profile(acme, "Spare", 1, 1024)
    profile_delete(actor=dennis, profile=spare)
    assert not HardwareProfile.objects.all_tenants().filter(pk=spare.pk).exists()
    assert AuditEvent.objects.all_tenants().filter(verb="hardware_profile.delete", object_id=str(spare.pk)).exists()


# --- the mapping ---------------------------------------------------------------------------------------------------
@pytest.fixture
def clouds(acme):
    """EC2 with arm and x86 sizes in one region, and a small simulated cloud with two regions."""
    ec2 = make_account(acme, "ec2-east", kind="ec2", regions=["us-east-1"])
    make_flavor(ec2, "t3.medium", 2, 4096, price="0.0416")
    make_flavor(ec2, "c5.xlarge", 4, 8192, price="0.17")
    make_flavor(ec2, "m5.2xlarge", 8, 32768, price="0.384")
    make_flavor(ec2, "m6g.medium", 1, 4096, arch="arm64", price="0.0385")
    make_flavor(ec2, "a1.xlarge", 4, 8192, arch="arm64", price="0.102")
    make_flavor(ec2, "c6g.xlarge", 4, 8192, arch="arm64", price="0.068")  # same size as a1.xlarge, cheaper
    make_flavor(ec2, "m6g.xlarge", 4, 16384, arch="arm64", price="0.154")
    make_flavor(ec2, "gone.xlarge", 4, 8192, arch="arm64", price="0.001", is_active=False)
    sim = make_account(acme, "sim-west", regions=["region-1", "region-2"])
    make_flavor(sim, "small", 2, 4096, region="region-1", price="0.02")
    make_flavor(sim, "large", 4, 8192, region="region-1", price="0.09", disk_gb=40)
    make_flavor(sim, "small", 2, 4096, region="region-2", price="0.02")
    make_account(acme, "old", regions=["region-1"], is_active=False)
    return {"ec2": ec2, "sim": sim}


@pytest.mark.django_db
def test_flavor_price_prefers_the_override():
    assert flavor_price(Flavor(provider_price_per_hour=Decimal("0.5"))) == Decimal("0.5")
    assert flavor_price(Flavor(provider_price_per_hour=Decimal("0.5"), price_override_per_hour=Decimal("0.4"))) \
        == Decimal("0.4")
    assert flavor_price(Flavor(price_override_per_hour=Decimal("0"))) == Decimal("0")
    assert flavor_price(Flavor()) is None


@pytest.mark.django_db
def test_mapping_matches_the_architecture_and_the_smallest_fit(acme, clouds):
    profile = make_profile(acme, "Standard", 4, 8192)
    x86 = profile_mapping(profile, organization=acme)
    arm = profile_mapping(profile, organization=acme, arch="arm64")
    assert fit_for(x86, clouds["ec2"]).flavor.name == "c5.xlarge"
    assert fit_for(x86, clouds["ec2"]).price_per_hour == Decimal("0.17")
    # tie on size (a1.xlarge and c6g.xlarge): the cheaper wins; m6g.xlarge is bigger; the inactive one is ignored
    assert fit_for(arm, clouds["ec2"]).flavor.name == "c6g.xlarge"
    assert fit_for(arm, clouds["ec2"]).flavor.arch == "arm64"
    # the inactive account is not offered at all
    assert {f.account.name for f in x86} == {"ec2-east", "sim-west"}


@pytest.mark.django_db
def test_a_price_override_changes_the_choice(acme, clouds):
    profile = make_profile(acme, "Standard", 4, 8192)
    Flavor.objects.all_tenants().filter(name="a1.xlarge").update(price_override_per_hour=Decimal("0.05"))
    fit = fit_for(profile_mapping(profile, organization=acme, arch="arm64"), clouds["ec2"])
    assert (fit.flavor.name, fit.price_per_hour) == ("a1.xlarge", Decimal("0.05"))


@pytest.mark.django_db
def test_clouds_without_a_fit_are_flagged_with_a_reason(acme, clouds):
    profile = make_profile(acme, "Standard", 4, 8192)
    arm = profile_mapping(profile, organization=acme, arch="arm64")
    for region in ("region-1", "region-2"):
        fit = fit_for(arm, clouds["sim"], region)
        assert fit.flavor is None and fit.price_per_hour is None
        assert fit.reason == f"no flavor with 4 vCPU / 8 GiB RAM for arm64 in sim-west {region}"
    x86 = profile_mapping(profile, organization=acme)
    assert fit_for(x86, clouds["sim"], "region-1").flavor.name == "large"
    assert fit_for(x86, clouds["sim"], "region-2").flavor is None


@pytest.mark.django_db
def test_disk_zero_means_any_root_disk_and_gpus_count(acme, clouds):
    big_disk = make_profile(acme, "Big disk", 4, 8192, disk_gb=100)
    x86 = profile_mapping(big_disk, organization=acme)
    assert fit_for(x86, clouds["ec2"]).flavor.name == "c5.xlarge"  # disk 0: a volume of any size
    assert fit_for(x86, clouds["sim"]).flavor is None  # "large" has a 40 GB root disk only
    assert "100 GB disk" in fit_for(x86, clouds["sim"]).reason
    gpu = make_profile(acme, "GPU", 4, 8192, gpus=1)
    assert fit_for(profile_mapping(gpu, organization=acme), clouds["ec2"]).flavor is None
    make_flavor(clouds["ec2"], "g5.xlarge", 4, 16384, price="1.006", gpus=1)
    assert fit_for(profile_mapping(gpu, organization=acme), clouds["ec2"]).flavor.name == "g5.xlarge"


@pytest.mark.django_db
def test_image_minimums_and_arch_come_from_the_image(acme, web, clouds):
    profile = make_profile(acme, "Tiny", 1, 1024)
    image = make_image(web, "Graviton", arch="arm64", min_ram_mb=8192)
    fit = fit_for(profile_mapping(profile, organization=acme, image=image), clouds["ec2"])
    assert fit.flavor.name == "c6g.xlarge"


@pytest.mark.django_db
def test_with_a_project_only_granted_account_regions_count(acme, web, data, clouds):
    CloudGrant.objects.create(organization=acme, account=clouds["sim"], project=web, regions=["region-2"])
    profile = make_profile(acme, "Small", 2, 4096)
    fits = profile_mapping(profile, organization=acme, project=web)
    assert [(f.account.name, f.region) for f in fits] == [("sim-west", "region-2")]
    assert profile_mapping(profile, organization=acme, project=data) == []
    revoked = CloudGrant.objects.create(organization=acme, account=clouds["ec2"], project=data)
    assert [f.account.name for f in profile_mapping(profile, organization=acme, project=data)] == ["ec2-east"]
    from django.utils import timezone

    CloudGrant.objects.all_tenants().filter(pk=revoked.pk).update(revoked_at=timezone.now())
    assert profile_mapping(profile, organization=acme, project=data) == []


@pytest.mark.django_db
def test_mappings_for_many_profiles_take_a_constant_number_of_queries(acme, web, clouds):
    CloudGrant.objects.create(organization=acme, account=clouds["sim"], project=web)
    profiles = [make_profile(acme, f"P{i}", i + 1, 1024 * (i + 1)) for i in range(5)]

    def count(ps: list[HardwareProfile]) -> tuple[int, dict[int, Any]]:
        with CaptureQueriesContext(connection) as ctx:
            result = profile_mappings(ps, organization=acme, project=web)
        return len(ctx.captured_queries), result

    one, result_one = count(profiles[:1])
    five, result_five = count(profiles)
    assert one == five <= 3
    assert set(result_five) == {p.pk for p in profiles}
    assert fit_for(result_five[profiles[1].pk], clouds["sim"]).flavor.name == "small"
    assert fit_for(result_five[profiles[4].pk], clouds["sim"]).flavor is None
    assert fit_for(result_one[profiles[0].pk], clouds["sim"]).flavor.name == "small"


# --- the launch's snapshot: the best flavor chosen by the database -------------------------------------------------
def _plain_fits(fits: list[Any]) -> list[tuple[int, str, int | None, Decimal | None, str]]:
    return [(f.account.pk, f.region, f.flavor.pk if f.flavor else None, f.price_per_hour, f.reason) for f in fits]


@pytest.mark.django_db
def test_the_launch_snapshot_picks_in_sql_what_the_mapping_picks_in_python(acme, web):
    """Many flavors with ties in size and price, overrides, unknown prices, disks, GPUs, another architecture and
    inactive ones: for every size asked, the database's choice (`launch_world`) is the mapping's own."""
    import random

    rng = random.Random(7)
    ec2 = make_account(acme, "ec2-many", kind="ec2", regions=["us-east-1", "eu-west-1", "ap-south-1"])
    sim = make_account(acme, "sim-many", regions=["region-1", "region-2"])
    prices = [None, "0.01", "0.02", "0.05", "0.05", "0.1"]
    # ties broken by name: case and punctuation as a database collation would not sort them
    names = ["Large", "compute-large", "b", "B-1", "a_1", "A.1", "m5.large", "M5-large", "z", "Zeta", "f1", "F10"]
    for n in range(160):
        account = rng.choice([ec2, sim])
        make_flavor(account, names[n % len(names)], rng.choice([1, 2, 2, 4, 8]),
                    rng.choice([512, 1024, 2048, 4096, 8192]),
                    region=rng.choice(account.all_regions), arch=rng.choice(["x86_64", "x86_64", "arm64"]),
                    price=rng.choice(prices), override=rng.choice([None, None, None, "0.03"]),
                    disk_gb=rng.choice([0, 0, 10, 40]), gpus=rng.choice([0, 0, 0, 1]),
                    is_active=rng.random() > 0.1, provider_id=f"id-{n}")
    make_account(acme, "empty", regions=["region-1"])  # nothing synced: its reason differs from "no fit"
    for account in (ec2, sim):
        CloudGrant.objects.create(organization=acme, account=account, project=web)
    sizes = [(1, 512, 0, 0), (2, 2048, 20, 0), (4, 4096, 0, 1), (8, 8192, 50, 0), (16, 65536, 0, 0)]
    for arch in ("x86_64", "arm64"):
        image = make_image(web, f"img-{arch}", arch=arch)
        world = launch_world(web, image)
        for vcpus, ram_mb, disk_gb, gpus in sizes:
            profile = make_profile(acme, f"p-{arch}-{vcpus}-{ram_mb}-{disk_gb}-{gpus}", vcpus, ram_mb,
                                   disk_gb=disk_gb, gpus=gpus)
            for granted_only in (True, False):
                expected = profile_mapping(profile, organization=acme, image=image,
                                           project=web if granted_only else None)
                assert _plain_fits(world.mapping(profile, granted_only=granted_only)) == _plain_fits(expected)
    assert any(f.flavor is None for f in world.mapping(profile, granted_only=False)), "some size fits nowhere"


@pytest.mark.django_db
def test_the_launch_snapshot_reads_one_flavor_per_region_however_many_are_synced(acme, web):
    """An EC2 region has hundreds of instance types: a launch reads the best one per account-region, in one
    query, never all of them."""
    from django.db.models.signals import post_init

    account = make_account(acme, "ec2-big", kind="ec2", regions=["us-east-1", "eu-west-1"])
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    profile = make_profile(acme, "Small", 1, 1024)
    image = make_image(web, "Ubuntu")

    def read(flavors_per_region: int) -> tuple[int, int, list[Any]]:
        have = Flavor.objects.all_tenants().filter(account=account).count() // 2
        for n in range(have, flavors_per_region):
            for region in account.all_regions:
                make_flavor(account, f"t{n}", 1 + n % 8, 1024 * (1 + n % 16), region=region, price=f"0.{n + 10}")
        built: list[Flavor] = []

        def note(sender: Any, instance: Any, **kwargs: Any) -> None:
            built.append(instance)

        post_init.connect(note, sender=Flavor)
        try:
            with CaptureQueriesContext(connection) as ctx:
                fits = launch_world(web, image).mapping(profile, granted_only=True)
        finally:
            post_init.disconnect(note, sender=Flavor)
        return len(ctx.captured_queries), len(built), fits

    few_queries, few_built, few = read(3)
    many_queries, many_built, many = read(300)
    assert few_queries == many_queries
    assert few_built == many_built == 2  # one per account-region
    assert [f.flavor.name for f in many] == ["t0", "t0"]  # 1 vCPU / 1 GiB, the smallest fit
    assert _plain_fits(many) == _plain_fits(profile_mapping(profile, organization=acme, image=image, project=web))
    assert [f.flavor.pk for f in few] == [f.flavor.pk for f in many]
