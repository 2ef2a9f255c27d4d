"""Hardware profiles: sizes in Skyport's terms ("small: 2 vCPU, 4 GiB RAM") mapped to the best flavor of every
cloud account and region of the organisation.

The mapping is computed, never stored: flavors are synced from the providers and prices change. For each active
account of the organisation and each region it is used in (and, for a project, only the account-regions a live
grant to that project covers) the best flavor is the smallest one that fits:

- vCPUs, RAM, root disk and GPUs at least the profile's (a flavor with a 0 GB disk takes any root disk size: the
  disk is a volume) and the image's minimums when an image is given;
- the architecture of the image (x86_64 or arm64);
- smallest first (vCPUs, then RAM), then the cheapest, then by name. A sysadmin's price override wins over the
  provider's price.

An account-region with no fitting flavor is listed with `flavor=None` and a reason a person can read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q, Window
from django.db.models.functions import Coalesce, Collate, RowNumber
from django.utils.text import slugify

from apps.accounts.models import Organization, Project, User
from apps.catalog.models import CatalogItem, HardwareProfile, Image, ImageCopy
from apps.catalog.permissions import require_change
from apps.clouds.models import CloudAccount, CloudGrant, Flavor
from apps.core import audit
from apps.core.access import get_access
from apps.core.permissions import ServiceError

PROFILE_FIELDS = ("name", "slug", "description", "vcpus", "ram_mb", "disk_gb", "gpus")
# field → (smallest, largest) accepted
LIMITS: dict[str, tuple[int, int]] = {
    "vcpus": (1, 512),
    "ram_mb": (128, 4 * 1024 * 1024),
    "disk_gb": (0, 65536),
    "gpus": (0, 16),
}
LABELS = {"vcpus": "vCPUs", "ram_mb": "RAM (MB)", "disk_gb": "Root disk (GB)", "gpus": "GPUs"}


# --- the mapping --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileFit:
    """The best flavor of one account-region for one profile (None, with `reason`, when nothing fits)."""

    account: CloudAccount
    region: str
    flavor: Flavor | None
    price_per_hour: Decimal | None
    reason: str = ""

    @property
    def fits(self) -> bool:
        return self.flavor is not None

    @property
    def where(self) -> str:
        return f"{self.account.name}/{self.region}"


def flavor_price(flavor: Flavor) -> Decimal | None:
    """The sysadmin's override when set, else the provider's price (None: unknown)."""
    if flavor.price_override_per_hour is not None:
        return Decimal(flavor.price_override_per_hour)
    if flavor.provider_price_per_hour is not None:
        return Decimal(flavor.provider_price_per_hour)
    return None


def _gib(ram_mb: int) -> str:
    value = Decimal(ram_mb) / 1024
    text = f"{value.quantize(Decimal('0.1')):f}"
    return text[:-2] if text.endswith(".0") else text


def describe_size(vcpus: int, ram_mb: int, disk_gb: int = 0, gpus: int = 0) -> str:
    """"4 vCPU / 8 GiB RAM" (plus the disk and GPUs when asked for)."""
    parts = [f"{vcpus} vCPU", f"{_gib(ram_mb)} GiB RAM"]
    if disk_gb:
        parts.append(f"{disk_gb} GB disk")
    if gpus:
        parts.append(f"{gpus} GPU" + ("s" if gpus > 1 else ""))
    return " / ".join(parts)


@dataclass(frozen=True)
class _Need:
    vcpus: int
    ram_mb: int
    disk_gb: int
    gpus: int

    def fits(self, flavor: Flavor) -> bool:
        return (
            flavor.vcpus >= self.vcpus
            and flavor.ram_mb >= self.ram_mb
            and (flavor.disk_gb == 0 or flavor.disk_gb >= self.disk_gb)
            and flavor.gpus >= self.gpus
        )


def _need(profile: HardwareProfile, image: Image | None) -> _Need:
    min_ram = image.min_ram_mb if image is not None else 0
    min_disk = image.min_disk_gb if image is not None else 0
    return _Need(
        vcpus=profile.vcpus,
        ram_mb=max(profile.ram_mb, min_ram),
        disk_gb=max(profile.disk_gb, min_disk),
        gpus=profile.gpus,
    )


def _flavor_order(flavor: Flavor) -> tuple[Any, ...]:
    price = flavor_price(flavor)
    return (flavor.vcpus, flavor.ram_mb, price is None, price or Decimal(0), flavor.name, flavor.pk)


@dataclass
class _World:
    """What a mapping reads, loaded once: the active accounts, their usable regions and their flavors."""

    targets: list[tuple[CloudAccount, str]]
    flavors: dict[tuple[int, str], list[Flavor]]  # (account id, region) → active flavors of the arch, best first
    any_flavor: set[tuple[int, str]]  # account-regions with at least one synced flavor (any arch)


def _load(organization: Organization, arch: str, project: Project | None) -> _World:
    accounts = _active_accounts(organization.pk)
    grants = _project_grants(organization.pk, project.pk) if project is not None else None
    targets = _targets(accounts, grants)
    flavors, any_flavor = _flavors(organization.pk, arch, {a.pk for a, _ in targets})
    return _World(targets, flavors, any_flavor)


def _active_accounts(organization_id: int) -> list[CloudAccount]:
    return list(
        CloudAccount.objects.all_tenants().filter(organization_id=organization_id, is_active=True).order_by("name")
    )


def _project_grants(organization_id: int, project_id: int) -> dict[int, CloudGrant]:
    """The project's live grants by account id (the first one of an account, as `live_grants` answers)."""
    grants: dict[int, CloudGrant] = {}
    live = CloudGrant.objects.all_tenants().filter(
        organization_id=organization_id, project_id=project_id, revoked_at__isnull=True
    )
    for grant in live:
        grants.setdefault(grant.account_id, grant)
    return grants


def _targets(accounts: list[CloudAccount], grants: dict[int, CloudGrant] | None) -> list[tuple[CloudAccount, str]]:
    """Every account-region (None: no project), or only those a live grant covers."""
    targets: list[tuple[CloudAccount, str]] = []
    for account in accounts:
        grant = grants.get(account.pk) if grants is not None else None
        if grants is not None and grant is None:
            continue
        for region in account.all_regions:
            if grant is None or grant.covers(region):
                targets.append((account, region))
    return targets


def _flavors(
    organization_id: int, arch: str, account_ids: set[int]
) -> tuple[dict[tuple[int, str], list[Flavor]], set[tuple[int, str]]]:
    flavors: dict[tuple[int, str], list[Flavor]] = {}
    any_flavor: set[tuple[int, str]] = set()
    if not account_ids:
        return flavors, any_flavor
    rows = Flavor.objects.all_tenants().filter(
        organization_id=organization_id, is_active=True, account_id__in=account_ids
    )
    for flavor in rows:
        key = (flavor.account_id, flavor.region)
        any_flavor.add(key)
        if flavor.arch == arch:
            flavors.setdefault(key, []).append(flavor)
    for candidates in flavors.values():
        candidates.sort(key=_flavor_order)
    return flavors, any_flavor


@dataclass
class LaunchWorld:
    """What launching one image in one project reads about clouds, read once and shared by the launch check
    (`catalog_item_launch_check`) and placement (`placement_candidates`): both used to read the same accounts,
    grants, flavors and image copies, which was a quarter of a launch request's queries. A snapshot for one
    request, never kept across requests.

    Flavors are not loaded whole: an EC2 account alone has hundreds per region. For each size asked for, one query
    picks the best fitting flavor of every account-region in the database (`best_flavors`); the answer is kept for
    the next ask of the same size (the launch check and placement ask the same)."""

    project: Project
    image: Image
    accounts: list[CloudAccount]  # the organisation's active accounts, by name
    grants: dict[int, CloudGrant]  # the project's live grants by account id
    copies: dict[tuple[int, str], str]  # (account id, region) → provider image id of the available copies
    _best: dict[_Need, dict[tuple[int, str], Flavor]] = dataclasses.field(default_factory=dict, repr=False)
    _any_flavor: set[tuple[int, str]] | None = dataclasses.field(default=None, repr=False)

    def serves(self, project: Project, image: Image) -> bool:
        """Whether this snapshot was read for `project` and `image`: one read for another is never used."""
        return (self.project.pk, self.project.organization_id, self.image.pk) == (
            project.pk,
            project.organization_id,
            image.pk,
        )

    def mapping(self, profile: HardwareProfile, *, granted_only: bool) -> list[ProfileFit]:
        """`profile_mapping(profile, image=...)` from the snapshot: with `granted_only` as for the project (only
        the account-regions its live grants cover), else for every account-region of the organisation."""
        need = _need(profile, self.image)
        if need not in self._best:
            self._best[need] = best_flavors(
                self.project.organization_id, self.image.arch, {a.pk for a in self.accounts}, need
            )
        targets = _targets(self.accounts, self.grants if granted_only else None)
        return _fits_for(targets, self._best[need], self.any_flavor, need, self.image.arch)

    def any_flavor(self) -> set[tuple[int, str]]:
        """Account-regions with at least one synced flavor (any arch): read only to explain a region that fits
        nothing."""
        if self._any_flavor is None:
            self._any_flavor = _synced_regions(self.project.organization_id, {a.pk for a in self.accounts})
        return self._any_flavor


def launch_world(project: Project, image: Image) -> LaunchWorld:
    """Read, in three queries, what the launch check and placement need to know about the clouds to launch `image`
    in `project`: accounts, grants and the image's copies (the best flavors follow, one query per size asked)."""
    organization_id = project.organization_id
    accounts = _active_accounts(organization_id)
    grants = _project_grants(organization_id, project.pk)
    copies = {
        (c.account_id, c.region): c.provider_image_id
        for c in ImageCopy.objects.all_tenants().filter(image_id=image.pk, state=ImageCopy.State.AVAILABLE)
    }
    return LaunchWorld(project, image, accounts, grants, copies)


def _fitting(need: _Need) -> Q:
    return (
        Q(vcpus__gte=need.vcpus)
        & Q(ram_mb__gte=need.ram_mb)
        & (Q(disk_gb=0) | Q(disk_gb__gte=need.disk_gb))
        & Q(gpus__gte=need.gpus)
    )


def best_flavors(organization_id: int, arch: str, account_ids: set[int], need: _Need) -> dict[tuple[int, str], Flavor]:
    """The best flavor of `arch` fitting `need` in every account-region of `account_ids` that has one, chosen by
    the database in one query (the order of `_flavor_order`: smallest, then cheapest, then by name)."""
    if not account_ids:
        return {}
    price = Coalesce("price_override_per_hour", "provider_price_per_hour")
    ranked = (
        Flavor.objects.all_tenants()
        .filter(_fitting(need), organization_id=organization_id, is_active=True, arch=arch, account_id__in=account_ids)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("account_id"), F("region")],
                order_by=[
                    F("vcpus").asc(),
                    F("ram_mb").asc(),
                    price.asc(nulls_last=True),
                    Collate(F("name"), _codepoint_collation()).asc(),
                    F("pk").asc(),
                ],
            )
        )
        .filter(rank=1)
    )
    return {(f.account_id, f.region): f for f in ranked}


def _codepoint_collation() -> str:
    """Names compared by code point, as Python compares them in `_flavor_order` (a database's default collation
    may sort "compute-large" before "Large")."""
    return "C" if connections[Flavor.objects.db].vendor == "postgresql" else "BINARY"


def _synced_regions(organization_id: int, account_ids: set[int]) -> set[tuple[int, str]]:
    if not account_ids:
        return set()
    rows = Flavor.objects.all_tenants().filter(
        organization_id=organization_id, is_active=True, account_id__in=account_ids
    )
    return set(rows.values_list("account_id", "region").distinct().order_by())


def _fits_for(
    targets: list[tuple[CloudAccount, str]],
    best: dict[tuple[int, str], Flavor],
    any_flavor: Callable[[], set[tuple[int, str]]],
    need: _Need,
    arch: str,
) -> list[ProfileFit]:
    out: list[ProfileFit] = []
    for account, region in targets:
        key = (account.pk, region)
        flavor = best.get(key)
        if flavor is not None:
            out.append(ProfileFit(account, region, flavor, flavor_price(flavor)))
            continue
        if key not in any_flavor():
            reason = f"no flavors synced for {account.name} {region}"
        else:
            size = describe_size(need.vcpus, need.ram_mb, need.disk_gb, need.gpus)
            reason = f"no flavor with {size} for {arch} in {account.name} {region}"
        out.append(ProfileFit(account, region, None, None, reason))
    return out


def _world_best(world: _World, need: _Need) -> dict[tuple[int, str], Flavor]:
    best: dict[tuple[int, str], Flavor] = {}
    for key, candidates in world.flavors.items():
        flavor = next((f for f in candidates if need.fits(f)), None)
        if flavor is not None:
            best[key] = flavor
    return best


def profile_mapping(
    profile: HardwareProfile,
    *,
    organization: Organization,
    arch: str = "x86_64",
    project: Project | None = None,
    image: Image | None = None,
) -> list[ProfileFit]:
    """The best flavor of every account-region of the organisation (of the project's grants when given) for this
    profile and architecture. With `image`, its architecture and minimum RAM/disk count too."""
    return profile_mappings([profile], organization=organization, arch=arch, project=project, image=image)[profile.pk]


def profile_mappings(
    profiles: Iterable[HardwareProfile],
    *,
    organization: Organization,
    arch: str = "x86_64",
    project: Project | None = None,
    image: Image | None = None,
) -> dict[int, list[ProfileFit]]:
    """`profile_mapping` for many profiles, in a fixed number of queries (accounts, grants and flavors once)."""
    if image is not None:
        arch = image.arch
    world = _load(organization, arch, project)
    fits: dict[int, list[ProfileFit]] = {}
    for profile in profiles:
        need = _need(profile, image)
        fits[profile.pk] = _fits_for(world.targets, _world_best(world, need), lambda: world.any_flavor, need, arch)
    return fits


def cheapest(fits: Iterable[ProfileFit]) -> list[ProfileFit]:
    """The fitting account-regions, cheapest first (unknown prices last), then by account name and region."""
    usable = [f for f in fits if f.flavor is not None]
    return sorted(
        usable,
        key=lambda f: (f.price_per_hour is None, f.price_per_hour or Decimal(0), f.account.name, f.region),
    )


# --- services -----------------------------------------------------------------------------------------------------
def _clean_number(field: str, value: Any) -> int:
    low, high = LIMITS[field]
    if isinstance(value, bool):
        raise ServiceError({field: f"{LABELS[field]} must be a whole number."})
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ServiceError({field: f"{LABELS[field]} must be a whole number."}) from None
    if isinstance(value, float) and number != value:
        raise ServiceError({field: f"{LABELS[field]} must be a whole number."})
    if number < low or number > high:
        raise ServiceError({field: f"{LABELS[field]} must be between {low} and {high}."})
    return number


def _clean_name(name: Any) -> tuple[str, str]:
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name:
        raise ServiceError({"name": "Give the profile a name."})
    if len(name) > 60:
        raise ServiceError({"name": "Use at most 60 characters."})
    slug = slugify(name)[:60]
    if not slug:
        raise ServiceError({"name": "Use letters or digits in the name."})
    return name, slug


def _check_unique(organization_id: int, name: str, slug: str, exclude_pk: int | None = None) -> None:
    others = HardwareProfile.objects.all_tenants().filter(organization_id=organization_id)
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    for other in others.only("name", "slug"):
        if other.slug == slug or other.name.lower() == name.lower() or other.slug == name.lower():
            raise ServiceError({"name": f"This organisation already has a profile called {other.name}."})


@transaction.atomic
def profile_create(
    *,
    actor: User,
    organization: Organization,
    name: str,
    vcpus: int,
    ram_mb: int,
    disk_gb: int = 0,
    gpus: int = 0,
    description: str = "",
) -> HardwareProfile:
    if not get_access(actor).can("images.manage", organization_id=organization.pk):
        raise PermissionDenied("You are not allowed to do this (images.manage).")
    name, slug = _clean_name(name)
    values = {
        f: _clean_number(f, v) for f, v in (("vcpus", vcpus), ("ram_mb", ram_mb), ("disk_gb", disk_gb), ("gpus", gpus))
    }
    description = (description or "").strip()
    if len(description) > 500:
        raise ServiceError({"description": "Use at most 500 characters."})
    _check_unique(organization.pk, name, slug)
    try:
        with transaction.atomic():  # a savepoint: a concurrent create with the same name loses cleanly
            profile = HardwareProfile.objects.create(
                organization=organization, name=name, slug=slug, description=description, created_by=actor, **values
            )
    except IntegrityError:
        raise ServiceError({"name": "A profile with this name was just created: choose another name."}) from None
    audit.record(
        actor=actor, verb="hardware_profile.create", obj=profile, after=audit.snapshot(profile, PROFILE_FIELDS)
    )
    return profile


@transaction.atomic
def profile_update(*, actor: User, profile: HardwareProfile, **fields: Any) -> HardwareProfile:
    """Change the name, description or size. The slug stays: blueprints refer to the profile by it."""
    require_change(actor, profile)
    unknown = set(fields) - {"name", "description", *LIMITS}
    if unknown:
        raise TypeError(f"profile_update() got unexpected fields: {', '.join(sorted(unknown))}")
    profile = HardwareProfile.objects.all_tenants().select_for_update().get(pk=profile.pk)
    before = audit.snapshot(profile, PROFILE_FIELDS)
    if "name" in fields:
        name, slug = _clean_name(fields["name"])
        _check_unique(profile.organization_id, name, slug, exclude_pk=profile.pk)
        profile.name = name
    if "description" in fields:
        description = (fields["description"] or "").strip()
        if len(description) > 500:
            raise ServiceError({"description": "Use at most 500 characters."})
        profile.description = description
    for field in LIMITS:
        if field in fields:
            setattr(profile, field, _clean_number(field, fields[field]))
    after = audit.snapshot(profile, PROFILE_FIELDS)
    if after == before:
        return profile
    profile.save()
    audit.record(actor=actor, verb="hardware_profile.update", obj=profile, before=before, after=after)
    if any(before[f] != after[f] for f in LIMITS):
        from apps.catalog.catalog import catalog_item_refresh_price

        for item in CatalogItem.objects.all_tenants().filter(profile_id=profile.pk).select_related("image"):
            catalog_item_refresh_price(item)
    return profile


def items_using_profile(profile: HardwareProfile) -> list[CatalogItem]:
    """Catalog items launching this profile: directly, or through a server of their blueprint version."""
    items = CatalogItem.objects.all_tenants().filter(organization_id=profile.organization_id)
    used: list[CatalogItem] = []
    for item in items.select_related("blueprint_version").order_by("name"):
        if item.profile_id == profile.pk:
            used.append(item)
        elif item.blueprint_version is not None:
            servers = (item.blueprint_version.spec or {}).get("servers") or {}
            if any(isinstance(s, dict) and s.get("profile_id") == profile.pk for s in servers.values()):
                used.append(item)
    return used


@transaction.atomic
def profile_delete(*, actor: User, profile: HardwareProfile) -> None:
    require_change(actor, profile)
    profile = HardwareProfile.objects.all_tenants().select_for_update().get(pk=profile.pk)
    used = items_using_profile(profile)
    if used:
        names = ", ".join(i.name for i in used[:5]) + (" …" if len(used) > 5 else "")
        raise ServiceError(f"{profile.name} is used by catalog items ({names}): change or delete them first.")
    before = audit.snapshot(profile, PROFILE_FIELDS)
    audit.record(actor=actor, verb="hardware_profile.delete", obj=profile, before=before)
    profile.delete()
