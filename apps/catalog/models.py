"""What designers build and consumers launch: images and their per-cloud copies, hardware profiles, blueprints and
the published catalog.

Images, profiles and blueprints belong to the organisation: every designer of its projects sees them (action
`images.view`), the owner project's designers (and org admins, and users holding a django-guardian object grant)
change them. Catalog items are seen by the projects they are published to.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core.access import Access
from apps.core.tenancy import TenantModel


class OrgWideModel(TenantModel):
    """A row owned by a project but visible org-wide to everyone the view action reaches (org roles and the
    project roles of any project of the organisation)."""

    class Meta:
        abstract = True

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        return Q(organization_id__in=access.orgs_allowing(action) | access.orgs_reached_through_projects(action))


class Arch(models.TextChoices):
    X86_64 = "x86_64", "x86_64"
    ARM64 = "arm64", "arm64 (aarch64)"


class Image(OrgWideModel):
    """A logical image: one operating system build, copied to as many cloud accounts as needed."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    class Source(models.TextChoices):
        UPLOAD = "upload", "Uploaded file"
        URL = "url", "Downloaded from a URL"
        PROVIDER = "provider", "Existing provider image"

    class State(models.TextChoices):
        IMPORTING = "importing", "Importing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Approval(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        REVOKED = "revoked", "Revoked"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="images")
    name = models.CharField(max_length=100)
    version = models.CharField(max_length=40, blank=True)
    os = models.CharField(max_length=60, blank=True)  # e.g. "Ubuntu", "Debian", "Windows Server"
    os_version = models.CharField(max_length=40, blank=True)
    arch = models.CharField(max_length=16, choices=Arch.choices, default=Arch.X86_64)
    description = models.TextField(blank=True, max_length=4000)
    min_disk_gb = models.PositiveIntegerField(default=0)
    min_ram_mb = models.PositiveIntegerField(default=0)

    source = models.CharField(max_length=10, choices=Source.choices)
    source_url = models.CharField(max_length=2000, blank=True)
    source_filename = models.CharField(max_length=255, blank=True)
    # the master file in the image store (None for a provider image that was never downloaded)
    store_key = models.CharField(max_length=255, blank=True)
    disk_format = models.CharField(max_length=16, blank=True)  # detected by qemu-img, never taken from the user
    size_bytes = models.BigIntegerField(null=True, blank=True)
    virtual_size_bytes = models.BigIntegerField(null=True, blank=True)
    checksum_sha256 = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.IMPORTING, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    error = models.CharField(max_length=1000, blank=True)

    approval = models.CharField(max_length=10, choices=Approval.choices, default=Approval.PENDING, db_index=True)
    approval_note = models.CharField(max_length=500, blank=True)
    approved_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "version", "pk"]
        constraints = [models.UniqueConstraint("organization", "name", "version", name="image_name_version_in_org")]
        permissions = [("manage_image", "Edit, push and share this image")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}".strip()

    @property
    def is_approved(self) -> bool:
        return self.approval == self.Approval.APPROVED


class ImageCopy(OrgWideModel):
    """An image in one cloud account and region: its own format, provider id, state and progress."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    class State(models.TextChoices):
        PENDING = "pending", "Queued"
        CONVERTING = "converting", "Converting"
        UPLOADING = "uploading", "Uploading"
        AVAILABLE = "available", "Available"
        FAILED = "failed", "Failed"

    ACTIVE_STATES: ClassVar[frozenset[str]] = frozenset({State.PENDING, State.CONVERTING, State.UPLOADING})

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="copies")
    account = models.ForeignKey("clouds.CloudAccount", on_delete=models.PROTECT, related_name="image_copies")
    region = models.CharField(max_length=64)
    disk_format = models.CharField(max_length=16, blank=True)  # the format this cloud was given
    provider_image_id = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    size_bytes = models.BigIntegerField(null=True, blank=True)
    checksum_sha256 = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    operation = models.ForeignKey(
        "clouds.Operation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)  # pushes started (a retry starts a new operation)
    requested_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["image_id", "account__name", "region"]
        constraints = [models.UniqueConstraint("image", "account", "region", name="one_copy_per_account_region")]

    def __str__(self) -> str:
        return f"{self.image} @ {self.account} {self.region}"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES


class ImageShare(TenantModel):
    """An image explicitly shared with another project of the organisation: its members may launch it and its
    designers may publish it."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="shares")
    project = models.ForeignKey("accounts.Project", on_delete=models.CASCADE, related_name="image_shares")
    shared_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "project__name"]
        constraints = [models.UniqueConstraint("image", "project", name="one_share_per_image_project")]

    def __str__(self) -> str:
        return f"{self.image} → {self.project}"

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        return Image.scope_filter(access, action)


class HardwareProfile(OrgWideModel):
    """A size in Skyport's terms, mapped to the best flavor of each account-region (see profiles.py)."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=60)
    slug = models.SlugField(max_length=60)
    description = models.CharField(max_length=500, blank=True)
    vcpus = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(512)])
    ram_mb = models.PositiveIntegerField(validators=[MinValueValidator(128), MaxValueValidator(4 * 1024 * 1024)])
    disk_gb = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(65536)])
    gpus = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(16)])
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["vcpus", "ram_mb", "name"]
        constraints = [models.UniqueConstraint("organization", "slug", name="profile_slug_in_org")]

    def __str__(self) -> str:
        return self.name

    @property
    def ram_gib(self) -> Decimal:
        return (Decimal(self.ram_mb) / 1024).quantize(Decimal("0.1"))


class Blueprint(OrgWideModel):
    """A named, versioned description of one or more servers. Versions are immutable."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="blueprints")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    description = models.CharField(max_length=1000, blank=True)
    latest_version = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint("organization", "slug", name="blueprint_slug_in_org")]
        permissions = [("manage_blueprint", "Edit this blueprint and save new versions")]

    def __str__(self) -> str:
        return self.name


class BlueprintVersion(OrgWideModel):
    """One saved version: the YAML as written and the validated document. Never changed once saved."""

    VIEW_ACTION: ClassVar[str] = "images.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    blueprint = models.ForeignKey(Blueprint, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.TextField(max_length=200_000)
    spec = models.JSONField()  # the validated document (see blueprints.py)
    note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["blueprint_id", "-number"]
        constraints = [models.UniqueConstraint("blueprint", "number", name="blueprint_version_number")]

    def __str__(self) -> str:
        return f"{self.blueprint.name} v{self.number}"


class CatalogItem(TenantModel):
    """What consumers launch: an image with a hardware profile, or a blueprint version, published to projects."""

    VIEW_ACTION: ClassVar[str] = "catalog.view"

    class Kind(models.TextChoices):
        IMAGE = "image", "Image + hardware profile"
        BLUEPRINT = "blueprint", "Blueprint"

    ICONS: ClassVar[tuple[str, ...]] = ("server", "globe", "database", "cpu", "box", "layers", "shield", "terminal")

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    # the project whose designers manage the item
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="catalog_items")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    summary = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True, max_length=8000)
    icon = models.CharField(max_length=20, default="server")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.PROTECT, related_name="catalog_items")
    profile = models.ForeignKey(
        HardwareProfile, null=True, blank=True, on_delete=models.PROTECT, related_name="catalog_items"
    )
    blueprint_version = models.ForeignKey(
        BlueprintVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="catalog_items"
    )
    # launches whose monthly estimate exceeds this need an approval (None: never; 0: always)
    approval_threshold_monthly = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # leases: how long a launch lives by default (None: no lease), the longest a user may ask for, and what
    # happens at expiry
    lease_days = models.PositiveSmallIntegerField(null=True, blank=True)
    lease_max_days = models.PositiveSmallIntegerField(null=True, blank=True)
    lease_action = models.CharField(max_length=6, choices=[("stop", "Stop"), ("delete", "Delete")], default="stop")
    # the estimate over the clouds it can run on: refreshed when the item changes and every 10 minutes
    price_hourly_min = models.DecimalField(max_digits=12, decimal_places=5, null=True, blank=True)
    price_hourly_max = models.DecimalField(max_digits=12, decimal_places=5, null=True, blank=True)
    is_enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint("organization", "slug", name="catalog_item_slug_in_org"),
            models.CheckConstraint(
                condition=(
                    Q(kind="image", image__isnull=False, profile__isnull=False, blueprint_version__isnull=True)
                    | Q(kind="blueprint", blueprint_version__isnull=False, image__isnull=True, profile__isnull=True)
                ),
                name="catalog_item_image_or_blueprint",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        # org roles with the action see every item; designers (catalog.publish through any project) manage the
        # organisation's items; everybody else sees the enabled items published to their projects
        managers = access.orgs_allowing(action) | access.orgs_reached_through_projects("catalog.publish")
        if action != "catalog.view":
            return Q(organization_id__in=access.orgs_allowing(action) | access.orgs_reached_through_projects(action))
        published = CatalogPublication._base_manager.filter(
            project_id__in=access.projects_allowing(action)
        ).values("item_id")
        return Q(organization_id__in=managers) | Q(is_enabled=True, pk__in=published)

    @property
    def price_monthly_min(self) -> Decimal | None:
        return None if self.price_hourly_min is None else (self.price_hourly_min * 730).quantize(Decimal("0.01"))

    @property
    def price_monthly_max(self) -> Decimal | None:
        return None if self.price_hourly_max is None else (self.price_hourly_max * 730).quantize(Decimal("0.01"))


class CatalogPublication(TenantModel):
    """A catalog item published to one project."""

    VIEW_ACTION: ClassVar[str] = "catalog.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    item = models.ForeignKey(CatalogItem, on_delete=models.CASCADE, related_name="publications")
    project = models.ForeignKey("accounts.Project", on_delete=models.CASCADE, related_name="catalog_publications")
    published_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    published_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["item_id", "project__name"]
        constraints = [models.UniqueConstraint("item", "project", name="one_publication_per_item_project")]

    def __str__(self) -> str:
        return f"{self.item} → {self.project}"


def image_usable_by_project(image: Image, project_id: int) -> bool:
    """Approved, and owned by or shared with the project."""
    if not image.is_approved:
        return False
    if image.project_id == project_id:
        return True
    return ImageShare._base_manager.filter(image=image, project_id=project_id).exists()


__all__: list[Any] = [
    "Blueprint",
    "BlueprintVersion",
    "CatalogItem",
    "CatalogPublication",
    "HardwareProfile",
    "Image",
    "ImageCopy",
    "ImageShare",
    "image_usable_by_project",
]
