"""The catalog: what consumers launch, published by designers to the projects of their organisation.

An item is either an image with a hardware profile or one version of a blueprint. Only approved images reach the
catalog: an item cannot be created or published while one of its images is unapproved (or not shared with the
project it is offered in), and an approval revoked later stops launches (`catalog_item_launch_check`). Each item
carries a price estimate (min/max per hour over the clouds it fits), refreshed when it or its profile changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, ProtectedError, Q, QuerySet
from django.utils.text import slugify

from apps.accounts.models import Organization, Project, User
from apps.catalog.blueprints import MAX_INSTANCES, blueprint_preview, referenced_images, server_count
from apps.catalog.events import catalog_group, catalog_message, send_catalog_event
from apps.catalog.models import (
    BlueprintVersion,
    CatalogItem,
    CatalogPublication,
    HardwareProfile,
    Image,
    image_usable_by_project,
)
from apps.catalog.permissions import require_change
from apps.catalog.profiles import LaunchWorld, cheapest, launch_world, profile_mapping, profile_mappings
from apps.core import audit
from apps.core.access import get_access
from apps.core.events import send_on_commit
from apps.core.permissions import ServiceError

ITEM_FIELDS = ("name", "slug", "summary", "description", "icon", "kind", "image", "profile", "blueprint_version",
               "approval_threshold_monthly", "is_enabled")
UPDATABLE = frozenset({"name", "summary", "description", "icon", "approval_threshold_monthly", "image", "profile",
                       "blueprint_version"})


# --- checks -------------------------------------------------------------------------------------------------------
def _image_problem(image: Image, project: Project) -> str:
    """'' when the project may launch the image, else why not (in words a designer can act on)."""
    if not image.is_approved:
        return f"Image {image} is not approved for use: ask a security admin to approve it."
    if image.state != Image.State.READY:
        return f"Image {image} is not ready ({image.get_state_display().lower()})."
    if not image_usable_by_project(image, project.pk):
        return f"Image {image} is not shared with project {project.name}: share it first."
    return ""


def _item_images(item: CatalogItem) -> list[Image]:
    if item.kind == CatalogItem.Kind.IMAGE:
        return [item.image] if item.image is not None else []
    if item.blueprint_version is None:
        return []
    ids = referenced_images(item.blueprint_version.spec or {})
    return list(Image.objects.all_tenants().filter(organization_id=item.organization_id, pk__in=ids))


def _blueprint_images(version: BlueprintVersion) -> tuple[list[Image], list[int]]:
    ids = referenced_images(version.spec or {})
    images = list(Image.objects.all_tenants().filter(organization_id=version.organization_id, pk__in=ids))
    missing = sorted(set(ids) - {i.pk for i in images})
    return images, missing


def _require_launchable_images(images: Iterable[Image], project: Project, field: str) -> None:
    for image in images:
        problem = _image_problem(image, project)
        if problem:
            raise ServiceError({field: problem})


def _clean_projects(organization_id: int, projects: Iterable[Project]) -> list[Project]:
    cleaned: list[Project] = []
    for project in projects:
        if project.organization_id != organization_id:
            raise ServiceError({"publish_to": "Items are published to projects of their own organisation only."})
        if project.is_archived:
            raise ServiceError({"publish_to": f"{project.name} is archived: it cannot receive catalog items."})
        if all(p.pk != project.pk for p in cleaned):
            cleaned.append(project)
    return cleaned


def _clean_text(field: str, value: Any, limit: int, *, required: bool = False) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise ServiceError({field: "This field is required."})
    if len(text) > limit:
        raise ServiceError({field: f"Use at most {limit} characters."})
    return text


def _clean_icon(icon: Any) -> str:
    if icon not in CatalogItem.ICONS:
        raise ServiceError({"icon": f"Choose an icon among: {', '.join(CatalogItem.ICONS)}."})
    return str(icon)


def _clean_threshold(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ServiceError({"approval_threshold_monthly": "Give an amount per month, e.g. 250.00."}) from None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e10"):
        raise ServiceError({"approval_threshold_monthly": "Give an amount of 0 or more (0: always ask)."})
    return amount.quantize(Decimal("0.01"))


def _unique_slug(organization_id: int, slug: str, exclude_pk: int | None = None) -> None:
    clash = CatalogItem.objects.all_tenants().filter(organization_id=organization_id, slug=slug)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ServiceError({"name": "This organisation already has a catalog item with this name."})


def _check_content(
    *,
    organization_id: int,
    project: Project,
    kind: str,
    image: Image | None,
    profile: HardwareProfile | None,
    blueprint_version: BlueprintVersion | None,
) -> None:
    if kind == CatalogItem.Kind.IMAGE:
        if image is None:
            raise ServiceError({"image": "Choose an image."})
        if profile is None:
            raise ServiceError({"profile": "Choose a hardware profile."})
        if blueprint_version is not None:
            raise ServiceError({"blueprint_version": "An image item does not take a blueprint."})
        if image.organization_id != organization_id or profile.organization_id != organization_id:
            raise ServiceError("The image and the profile must belong to the item's organisation.")
        _require_launchable_images([image], project, "image")
    elif kind == CatalogItem.Kind.BLUEPRINT:
        if blueprint_version is None:
            raise ServiceError({"blueprint_version": "Choose a blueprint version."})
        if image is not None or profile is not None:
            raise ServiceError({"blueprint_version": "A blueprint item takes no image or profile of its own."})
        if blueprint_version.organization_id != organization_id:
            raise ServiceError({"blueprint_version": "The blueprint must belong to the item's organisation."})
        images, missing = _blueprint_images(blueprint_version)
        if missing:
            raise ServiceError({"blueprint_version": "An image this blueprint version uses no longer exists."})
        _require_launchable_images(images, project, "blueprint_version")
    else:
        raise ServiceError({"kind": "Choose image or blueprint."})


def _event(item: CatalogItem, state: str | None = None) -> None:
    if state is None:
        send_catalog_event(item=item)
    else:
        send_on_commit(
            catalog_group(item.organization_id),
            catalog_message(event="catalog_item", id=item.pk, image=item.image_id, state=state, progress=100),
        )


def _require_publish(actor: User, project: Project) -> None:
    if not get_access(actor).can("catalog.publish", organization_id=project.organization_id, project_id=project.pk):
        raise PermissionDenied("You are not allowed to do this (catalog.publish).")


def _publish_rows(actor: User, item: CatalogItem, projects: list[Project]) -> list[Project]:
    """Publication rows for the projects not published to yet; the ones added."""
    existing = set(
        CatalogPublication.objects.all_tenants().filter(item_id=item.pk).values_list("project_id", flat=True)
    )
    added = [p for p in projects if p.pk not in existing]
    for project in added:
        CatalogPublication.objects.create(
            organization_id=item.organization_id, item=item, project=project, published_by=actor
        )
    return added


# --- services -----------------------------------------------------------------------------------------------------
@transaction.atomic
def catalog_item_create(
    *,
    actor: User,
    project: Project,
    name: str,
    kind: str,
    image: Image | None = None,
    profile: HardwareProfile | None = None,
    blueprint_version: BlueprintVersion | None = None,
    summary: str = "",
    description: str = "",
    icon: str = "server",
    approval_threshold_monthly: Decimal | str | None = None,
    publish_to: Iterable[Project] = (),
) -> CatalogItem:
    """A new item managed by `project`'s designers. Every check runs first: a refused item writes nothing."""
    _require_publish(actor, project)
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived."})
    org_id = project.organization_id
    name = _clean_text("name", name, 100, required=True)
    slug = slugify(name)[:100]
    if not slug:
        raise ServiceError({"name": "Use letters or digits in the name."})
    summary = _clean_text("summary", summary, 200)
    description = _clean_text("description", description, 8000)
    icon = _clean_icon(icon)
    threshold = _clean_threshold(approval_threshold_monthly)
    _check_content(organization_id=org_id, project=project, kind=kind, image=image, profile=profile,
                   blueprint_version=blueprint_version)
    targets = _clean_projects(org_id, publish_to)
    for target in targets:
        for img in _images_of(kind, image, blueprint_version):
            if target.pk != project.pk and not image_usable_by_project(img, target.pk):
                raise ServiceError({"publish_to": f"Image {img} is not shared with project {target.name}: share it "
                                                  "first."})
    _unique_slug(org_id, slug)
    try:
        with transaction.atomic():  # a savepoint: a concurrent create with the same name loses cleanly
            item = CatalogItem.objects.create(
                organization_id=org_id, project=project, name=name, slug=slug, summary=summary,
                description=description, icon=icon, kind=kind, image=image, profile=profile,
                blueprint_version=blueprint_version, approval_threshold_monthly=threshold, created_by=actor,
            )
    except IntegrityError:
        raise ServiceError({"name": "An item with this name was just created: choose another name."}) from None
    _publish_rows(actor, item, targets)
    catalog_item_refresh_price(item)
    audit.record(actor=actor, verb="catalog_item.create", obj=item, after=audit.snapshot(item, ITEM_FIELDS),
                 extra={"published_to": [p.name for p in targets]})
    _event(item)
    return item


def _images_of(kind: str, image: Image | None, version: BlueprintVersion | None) -> list[Image]:
    if kind == CatalogItem.Kind.IMAGE:
        return [image] if image is not None else []
    return _blueprint_images(version)[0] if version is not None else []


def _locked(item: CatalogItem) -> CatalogItem:
    return (
        CatalogItem.objects.all_tenants()
        .select_for_update(of=("self",))  # the nullable relations are outer joins, which cannot be locked
        .select_related("project", "image", "profile", "blueprint_version")
        .get(pk=item.pk)
    )


@transaction.atomic
def catalog_item_update(*, actor: User, item: CatalogItem, **fields: Any) -> CatalogItem:
    """Change the text, icon, threshold or content (another image, profile or blueprint version: checked again)."""
    require_change(actor, item, "catalog.publish")
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise TypeError(f"catalog_item_update() got unexpected fields: {', '.join(sorted(unknown))}")
    item = _locked(item)
    before = audit.snapshot(item, ITEM_FIELDS)
    if "name" in fields:
        item.name = _clean_text("name", fields["name"], 100, required=True)
        slug = slugify(item.name)[:100]
        if not slug:
            raise ServiceError({"name": "Use letters or digits in the name."})
        if slug != item.slug:
            _unique_slug(item.organization_id, slug, exclude_pk=item.pk)
            item.slug = slug
    if "summary" in fields:
        item.summary = _clean_text("summary", fields["summary"], 200)
    if "description" in fields:
        item.description = _clean_text("description", fields["description"], 8000)
    if "icon" in fields:
        item.icon = _clean_icon(fields["icon"])
    if "approval_threshold_monthly" in fields:
        item.approval_threshold_monthly = _clean_threshold(fields["approval_threshold_monthly"])
    # content checks run only when the content changes: a revoked image must not block fixing a typo
    content = {k for k in ("image", "profile", "blueprint_version") if k in fields
               and getattr(fields[k], "pk", None) != getattr(getattr(item, k), "pk", None)}
    if content:
        image = fields.get("image", item.image)
        profile = fields.get("profile", item.profile)
        version = fields.get("blueprint_version", item.blueprint_version)
        _check_content(organization_id=item.organization_id, project=item.project, kind=item.kind, image=image,
                       profile=profile, blueprint_version=version)
        if version is not None and item.blueprint_version is not None and \
                version.blueprint_id != item.blueprint_version.blueprint_id:
            raise ServiceError({"blueprint_version": "Choose a version of the same blueprint."})
        for publication in CatalogPublication.objects.all_tenants().filter(item_id=item.pk).select_related("project"):
            for img in _images_of(item.kind, image, version):
                if not image_usable_by_project(img, publication.project_id):
                    raise ServiceError({"image": f"Image {img} is not shared with project "
                                                 f"{publication.project.name}, where this item is published."})
        item.image, item.profile, item.blueprint_version = image, profile, version
    after = audit.snapshot(item, ITEM_FIELDS)
    if after == before:
        return item
    item.save()
    if content:
        catalog_item_refresh_price(item)
    audit.record(actor=actor, verb="catalog_item.update", obj=item, before=before, after=after)
    _event(item)
    return item


@transaction.atomic
def catalog_item_publish(*, actor: User, item: CatalogItem, projects: Iterable[Project]) -> CatalogItem:
    """Offer the item to more projects. Refused while one of its images is not approved (any more)."""
    require_change(actor, item, "catalog.publish")
    item = _locked(item)
    targets = _clean_projects(item.organization_id, projects)
    if not targets:
        raise ServiceError({"projects": "Choose at least one project."})
    images = _item_images(item)
    if item.kind == CatalogItem.Kind.BLUEPRINT and item.blueprint_version is not None and \
            _blueprint_images(item.blueprint_version)[1]:
        raise ServiceError("An image this blueprint version uses no longer exists.")
    for image in images:
        if not image.is_approved:
            raise ServiceError(f"Image {image} is not approved for use: ask a security admin to approve it.")
        for target in targets:
            if not image_usable_by_project(image, target.pk):
                raise ServiceError({"projects": f"Image {image} is not shared with project {target.name}: share it "
                                                "first."})
    added = _publish_rows(actor, item, targets)
    if added:
        audit.record(actor=actor, verb="catalog_item.publish", obj=item,
                     extra={"projects": [p.name for p in added]})
        _event(item, "published")
    return item


@transaction.atomic
def catalog_item_unpublish(*, actor: User, item: CatalogItem, project: Project) -> CatalogItem:
    require_change(actor, item, "catalog.publish")
    item = _locked(item)
    deleted, _ = CatalogPublication.objects.all_tenants().filter(item_id=item.pk, project_id=project.pk).delete()
    if not deleted:
        raise ServiceError({"project": f"{item.name} is not published to {project.name}."})
    audit.record(actor=actor, verb="catalog_item.unpublish", obj=item, extra={"project": project.name})
    _event(item, "unpublished")
    return item


@transaction.atomic
def catalog_item_set_enabled(*, actor: User, item: CatalogItem, enabled: bool) -> CatalogItem:
    """A disabled item disappears from consumers' catalog (designers still see it) and cannot be launched."""
    require_change(actor, item, "catalog.publish")
    item = _locked(item)
    enabled = bool(enabled)
    if item.is_enabled == enabled:
        return item
    if enabled:
        for image in _item_images(item):
            if not image.is_approved:
                raise ServiceError(f"Image {image} is not approved for use: ask a security admin to approve it.")
    item.is_enabled = enabled
    item.save(update_fields=["is_enabled", "updated_at"])
    audit.record(actor=actor, verb="catalog_item.enable" if enabled else "catalog_item.disable", obj=item,
                 before={"is_enabled": not enabled}, after={"is_enabled": enabled})
    _event(item)
    return item


@transaction.atomic
def catalog_item_delete(*, actor: User, item: CatalogItem) -> None:
    require_change(actor, item, "catalog.publish")
    item = _locked(item)
    before = audit.snapshot(item, ITEM_FIELDS)
    pk, org_id, image_id = item.pk, item.organization_id, item.image_id
    audit.record(actor=actor, verb="catalog_item.delete", obj=item, before=before)
    try:
        with transaction.atomic():
            item.delete()
    except ProtectedError:
        raise ServiceError(f"{item.name} has been launched: disable it instead of deleting it.") from None
    send_on_commit(catalog_group(org_id),
                   catalog_message(event="catalog_item", id=pk, image=image_id, state="deleted", progress=100))


# --- prices -------------------------------------------------------------------------------------------------------
def _price_range(item: CatalogItem, organization: Organization) -> tuple[Decimal | None, Decimal | None]:
    if item.kind == CatalogItem.Kind.IMAGE:
        if item.image is None or item.profile is None:
            return None, None
        fits = profile_mapping(item.profile, organization=organization, image=item.image)
        prices = [f.price_per_hour for f in fits if f.flavor is not None and f.price_per_hour is not None]
        return (min(prices), max(prices)) if prices else (None, None)
    if item.blueprint_version is None:
        return None, None
    spec = item.blueprint_version.spec or {}
    preview = blueprint_preview(spec, organization=organization, require_copies=False)
    if not preview.instances or not preview.priced:
        return None, None
    # the most expensive: each server's instances on the dearest fitting flavor
    servers = spec.get("servers") or {}
    images = {i.image.pk: i.image for i in preview.instances if i.image is not None}
    profiles = {i.profile.pk: i.profile for i in preview.instances if i.profile is not None}
    high = Decimal(0)
    by_arch = {
        arch: profile_mappings(profiles.values(), organization=organization, arch=arch)
        for arch in {i.arch for i in images.values()}
    }
    for server in servers.values():
        image, profile = images.get(server.get("image_id")), profiles.get(server.get("profile_id"))
        count = min(max(server_count(server, preview.parameters) or 0, 0), MAX_INSTANCES)
        if image is None or profile is None:
            continue
        prices = [f.price_per_hour for f in cheapest(by_arch[image.arch][profile.pk]) if f.price_per_hour is not None]
        high += max(prices, default=Decimal(0)) * count
    return preview.hourly, max(high, preview.hourly)


def catalog_item_refresh_price(item: CatalogItem) -> CatalogItem:
    """Store the item's price estimate per hour: min and max over the account-regions it fits (for a blueprint,
    the cheapest placement of all its servers and the dearest). A derived value: not audited."""
    organization = Organization.objects.all_tenants().get(pk=item.organization_id)
    low, high = _price_range(item, organization)
    places = Decimal("0.00001")
    item.price_hourly_min = low.quantize(places) if low is not None else None
    item.price_hourly_max = high.quantize(places) if high is not None else None
    CatalogItem.objects.all_tenants().filter(pk=item.pk).update(
        price_hourly_min=item.price_hourly_min, price_hourly_max=item.price_hourly_max
    )
    return item


# --- launching and browsing ---------------------------------------------------------------------------------------
def catalog_item_launch_check(item: CatalogItem, *, project: Project, world: LaunchWorld | None = None) -> list[str]:
    """Why the item cannot be launched in `project` ([] when it can). Permission to launch is the launch's check.
    `world` (from `launch_world` for the item's image and `project`) is what the launch reads once and hands to
    placement too; without it, or for a blueprint item, the check reads what it needs itself."""
    reasons: list[str] = []
    if item.organization_id != project.organization_id:
        return [f"{item.name} is not offered in {project.name}."]
    if not item.is_enabled:
        reasons.append(f"{item.name} is disabled.")
    if project.is_archived:
        reasons.append(f"{project.name} is archived.")
    published = CatalogPublication.objects.all_tenants().filter(item_id=item.pk, project_id=project.pk).exists()
    if not published:
        reasons.append(f"{item.name} is not published to {project.name}.")
    if item.kind == CatalogItem.Kind.IMAGE:
        image, profile = item.image, item.profile
        if image is None or profile is None:
            return [*reasons, f"{item.name} has no image or profile."]
        problem = _image_problem(image, project)
        if problem:
            reasons.append(problem)
        if world is None or not world.serves(project, image):
            world = launch_world(project, image)
        return reasons + _cloud_problems(world, profile)
    organization = Organization.objects.all_tenants().get(pk=item.organization_id)
    version = item.blueprint_version
    if version is None:
        return [*reasons, f"{item.name} has no blueprint version."]
    images, missing = _blueprint_images(version)
    if missing:
        reasons.append("An image this blueprint uses no longer exists.")
    for image in images:
        problem = _image_problem(image, project)
        if problem:
            reasons.append(problem)
    preview = blueprint_preview(version.spec or {}, organization=organization, project=project)
    reasons.extend(_sentence(p) for p in preview.problems)
    return list(dict.fromkeys(reasons))


def _cloud_problems(world: LaunchWorld, profile: HardwareProfile) -> list[str]:
    """Why no granted cloud can take the image on `profile`: no grant, no fitting flavor, or no copy there."""
    project, image = world.project, world.image
    mapping = world.mapping(profile, granted_only=True)
    fits = [f for f in mapping if f.fits]
    if not mapping:
        return [f"No cloud account is granted to {project.name}."]
    if not fits:
        return [f"No cloud granted to {project.name} has a flavor for {profile.name} ({image.arch})."]
    if not any((f.account.pk, f.region) in world.copies for f in fits):
        where = ", ".join(f.where for f in cheapest(fits)[:3])
        return [f"Image {image} has no copy in {where}: push it first."]
    return []


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def catalog_for(user: User, *, project: Project | None = None, search: str = "") -> QuerySet[CatalogItem]:
    """The items `user` may see (consumers: enabled and published to one of their projects; designers and org
    roles: all of the organisation), optionally only those published to `project`, matching `search`. The
    related rows a listing shows are loaded with it (a fixed number of queries for any length)."""
    qs = CatalogItem.objects.for_user(user, "catalog.view")
    if project is not None:
        published = CatalogPublication.objects.all_tenants().filter(project_id=project.pk).values("item_id")
        qs = qs.filter(organization_id=project.organization_id, pk__in=published)
    search = (search or "").strip()[:100]
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(summary__icontains=search) | Q(description__icontains=search))
    publications = CatalogPublication.objects.for_user(user, "catalog.view").select_related("project")
    return qs.select_related("project", "image", "profile", "blueprint_version__blueprint").prefetch_related(
        Prefetch("publications", queryset=publications)
    ).order_by("name", "pk")
