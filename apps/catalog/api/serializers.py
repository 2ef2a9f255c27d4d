"""Serializers of the catalog API. They validate and shape data; every write happens in the apps.catalog services.

Writable relations are scoped to the signed-in user: an id outside their reach answers 400 "does not exist", like
an id that does not exist. Nothing secret is ever part of a response (an image's source URL is shown without its
user-info and query string, which may carry credentials or signatures)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rest_framework import serializers

from apps.accounts.models import Organization, Project
from apps.catalog.models import (
    Arch,
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)
from apps.clouds.models import CloudAccount, CloudImage
from apps.core.access import get_access
from apps.core.api.serializers import (
    ScopedPrimaryKeyRelatedField,
    ScopedRelatedField,
    StrictSerializer,
    TenantModelSerializer,
    request_user,
)

MONTH_HOURS = 730


def enum_field(choices: Any, **kwargs: Any) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=choices, **kwargs)


def state_field(choices: Any, help_text: str) -> serializers.ChoiceField:
    return enum_field(choices, read_only=True, help_text=help_text)


def price_field(help_text: str, decimal_places: int = 5) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=14, decimal_places=decimal_places, read_only=True, allow_null=True, help_text=help_text
    )


class UsernameField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "Username.")
        super().__init__(slug_field="username", read_only=True, **kwargs)


def public_url(url: str) -> str:
    """The URL without user-info, query string and fragment: what can be shown to anybody who sees the image."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return ""


# --- relations reached through the organisation -----------------------------------------------------------
class OrganizationProjectField(ScopedRelatedField, serializers.PrimaryKeyRelatedField):
    """A project of an organisation where the user holds `action` (in an org role or in any of its projects):
    images are shared and catalog items published to other projects of the same organisation. The service
    checks the project against the row's organisation."""

    def __init__(self, action: str, **kwargs: Any) -> None:
        self.scoped_action = action
        if not kwargs.get("read_only"):
            kwargs["queryset"] = Project.objects.all_tenants().none()
        super().__init__(**kwargs)

    def scoped_queryset(self, user: Any) -> Any:
        access = get_access(user)
        orgs = access.orgs_allowing(self.scoped_action) | access.orgs_reached_through_projects(self.scoped_action)
        # scoped by the organisations computed from the user's memberships just above
        return Project.objects.all_tenants().filter(organization_id__in=orgs, is_archived=False)


# --- images -------------------------------------------------------------------------------------------------
class ImageCopyBriefSerializer(TenantModelSerializer):
    """Where an image has been pushed to, and how far each push got."""

    account_name = serializers.CharField(source="account.name", read_only=True)
    state = state_field(ImageCopy.State.choices, "pending, converting, uploading, available or failed.")

    class Meta:
        model = ImageCopy
        fields = ["id", "account", "account_name", "region", "state", "progress", "error", "provider_image_id"]
        read_only_fields = fields


IMAGE_FIELDS = [
    "id", "organization", "project", "project_name", "name", "version", "os", "os_version", "arch", "description",
    "min_disk_gb", "min_ram_mb", "source", "source_url", "source_filename", "disk_format", "size_bytes",
    "virtual_size_bytes", "checksum_sha256", "state", "progress", "error", "approval", "approval_note",
    "approved_by", "approved_at", "is_approved", "created_by", "created_at", "updated_at",
]
IMAGE_EDITABLE = ["name", "version", "os", "os_version", "arch", "description", "min_disk_gb", "min_ram_mb"]


class ImageSerializer(TenantModelSerializer):
    """A logical image. `state`/`progress`/`error` follow the import; `approval` says whether it may be
    launched. Its copies in each cloud are under `image-copies/?image=<id>`."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project_name = serializers.CharField(source="project.name", read_only=True)
    arch = enum_field(Arch.choices, required=False, help_text="CPU architecture.")
    source: Any = state_field(Image.Source.choices, "upload, url or provider.")
    source_url = serializers.SerializerMethodField()
    state = state_field(Image.State.choices, "importing, ready or failed.")
    approval = state_field(Image.Approval.choices, "pending, approved or revoked.")
    approved_by: Any = UsernameField()
    created_by: Any = UsernameField()
    is_approved = serializers.BooleanField(read_only=True)

    class Meta:
        model = Image
        fields = IMAGE_FIELDS
        read_only_fields = [f for f in IMAGE_FIELDS if f not in IMAGE_EDITABLE]

    def get_source_url(self, obj: Image) -> str:
        return public_url(obj.source_url)


class ImageDetailSerializer(ImageSerializer):
    copies = ImageCopyBriefSerializer(many=True, read_only=True)

    class Meta(ImageSerializer.Meta):
        fields = [*IMAGE_FIELDS, "copies"]
        read_only_fields = [*ImageSerializer.Meta.read_only_fields, "copies"]


class _ImageMetaSerializer(StrictSerializer):
    project = ScopedPrimaryKeyRelatedField(Project, "images.manage", help_text="Id of the owner project.")
    name = serializers.CharField(max_length=100)
    version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    os = serializers.CharField(max_length=60, required=False, allow_blank=True, default="")
    os_version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    description = serializers.CharField(max_length=4000, required=False, allow_blank=True, default="")


class _ChecksumMixin(serializers.Serializer):
    arch = enum_field(Arch.choices, required=False, default=Arch.X86_64, help_text="CPU architecture.")
    expected_sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$", required=False, allow_blank=True, default="",
        help_text="When given, the import fails unless the file has this SHA-256.",
    )

    def validate_expected_sha256(self, value: str) -> str:
        return value.lower()


class ImageImportUrlSerializer(_ChecksumMixin, _ImageMetaSerializer):
    """Import an image from an http(s) URL: answered at once with state `importing`; the download, checksum and
    format inspection run in the background (`state` becomes `ready` or `failed` with `error`)."""

    url = serializers.URLField(max_length=2000, help_text="http(s) URL of the disk image.")


class ImageUploadSerializer(_ChecksumMixin, _ImageMetaSerializer):
    """Upload a disk image (multipart/form-data). It is inspected before anything is stored: a file that is not a
    disk image, too large, or whose checksum differs is refused with a 400."""

    file = serializers.FileField(help_text="The disk image: qcow2, raw, vmdk, vhd or vhdx (detected).")


class ImageImportProviderSerializer(_ImageMetaSerializer):
    """Adopt an image that already exists in a cloud account (see `cloud-images/`)."""

    cloud_image = ScopedPrimaryKeyRelatedField(
        CloudImage, "images.manage", help_text="Id of the cloud image (of an account your project may use)."
    )


class ImageUpdateSerializer(ImageSerializer):
    """The fields of an image that can change."""

    name = serializers.CharField(max_length=100, required=False)


class PushTargetSerializer(StrictSerializer):
    account = ScopedPrimaryKeyRelatedField(CloudAccount, "images.manage", help_text="Id of the cloud account.")
    region = serializers.CharField(max_length=64)


class ImagePushSerializer(StrictSerializer):
    targets = PushTargetSerializer(many=True, allow_empty=False)

    def validate_targets(self, value: list[Any]) -> list[Any]:
        if len(value) > 100:
            raise serializers.ValidationError("At most 100 targets at once.")
        return value


class PushTargetOutSerializer(serializers.Serializer):
    account = serializers.IntegerField()
    account_name = serializers.CharField()
    region = serializers.CharField()


class ApproveSerializer(StrictSerializer):
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class RevokeSerializer(StrictSerializer):
    note = serializers.CharField(max_length=500, help_text="Why the image may no longer be launched (required).")


class ImageCopySerializer(TenantModelSerializer):
    """An image in one cloud account and region. Read `state` and `progress` (0-100) to follow a push; `error`
    says why a copy failed (retry it with `POST image-copies/{id}/retry/`)."""

    image: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    image_name = serializers.CharField(source="image.name", read_only=True)
    image_version = serializers.CharField(source="image.version", read_only=True)
    account: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    state = state_field(ImageCopy.State.choices, "pending, converting, uploading, available or failed.")
    is_active = serializers.BooleanField(read_only=True, help_text="The push is still running.")
    operation: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    requested_by: Any = UsernameField()

    class Meta:
        model = ImageCopy
        fields = [
            "id", "image", "image_name", "image_version", "account", "account_name", "region", "disk_format",
            "provider_image_id", "state", "progress", "is_active", "size_bytes", "checksum_sha256", "error",
            "attempts", "operation", "requested_by", "created_at", "updated_at",
        ]
        read_only_fields = fields


class ImageShareSerializer(TenantModelSerializer):
    """An image shared with another project of the organisation (its members may launch it, its designers
    publish it). DELETE stops sharing."""

    image: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    image_name = serializers.CharField(source="image.name", read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project_name = serializers.CharField(source="project.name", read_only=True)
    shared_by: Any = UsernameField()

    class Meta:
        model = ImageShare
        fields = ["id", "image", "image_name", "project", "project_name", "shared_by", "created_at"]
        read_only_fields = fields


class ImageShareCreateSerializer(StrictSerializer):
    project = OrganizationProjectField("images.manage", help_text="Id of a project of the image's organisation.")


# --- hardware profiles ----------------------------------------------------------------------------------------
class HardwareProfileSerializer(TenantModelSerializer):
    """A size in Skyport's terms; `mapping` shows the flavor it becomes in each account-region."""

    organization: Any = ScopedPrimaryKeyRelatedField(Organization, "images.manage", help_text="Id of the organisation.")
    ram_gib = serializers.DecimalField(max_digits=10, decimal_places=1, read_only=True)
    created_by: Any = UsernameField()

    class Meta:
        model = HardwareProfile
        fields = ["id", "organization", "name", "slug", "description", "vcpus", "ram_mb", "ram_gib", "disk_gb", "gpus",
                  "created_by", "created_at", "updated_at"]
        read_only_fields = ["id", "slug", "ram_gib", "created_by", "created_at", "updated_at"]


class HardwareProfileUpdateSerializer(HardwareProfileSerializer):
    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    name = serializers.CharField(max_length=60, required=False)
    vcpus = serializers.IntegerField(min_value=1, max_value=512, required=False)
    ram_mb = serializers.IntegerField(min_value=128, max_value=4 * 1024 * 1024, required=False)


class ProfileFitSerializer(serializers.Serializer):
    """The best flavor of one account-region for a profile (none, with the reason, when nothing fits)."""

    account = serializers.IntegerField()
    account_name = serializers.CharField()
    region = serializers.CharField()
    flavor = serializers.IntegerField(allow_null=True)
    flavor_name = serializers.CharField(allow_null=True)
    vcpus = serializers.IntegerField(allow_null=True)
    ram_mb = serializers.IntegerField(allow_null=True)
    price_per_hour = price_field("Estimated price per hour (null: unknown).")
    price_per_month = price_field("Estimated price per month of 730 hours.", decimal_places=2)
    reason = serializers.CharField()


def fit_data(fit: Any) -> dict[str, Any]:
    flavor = fit.flavor
    price = fit.price_per_hour
    return {
        "account": fit.account.pk,
        "account_name": fit.account.name,
        "region": fit.region,
        "flavor": flavor.pk if flavor else None,
        "flavor_name": flavor.name if flavor else None,
        "vcpus": flavor.vcpus if flavor else None,
        "ram_mb": flavor.ram_mb if flavor else None,
        "price_per_hour": price,
        "price_per_month": None if price is None else (Decimal(price) * MONTH_HOURS).quantize(Decimal("0.01")),
        "reason": fit.reason or "",
    }


# --- blueprints -----------------------------------------------------------------------------------------------
class BlueprintSerializer(TenantModelSerializer):
    """A named, versioned description of one or more servers. Versions are immutable: save a new one with
    `POST blueprints/{id}/versions/`."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = ScopedPrimaryKeyRelatedField(Project, "images.manage", help_text="Id of the owner project.")
    project_name = serializers.CharField(source="project.name", read_only=True)
    created_by: Any = UsernameField()

    class Meta:
        model = Blueprint
        fields = ["id", "organization", "project", "project_name", "name", "slug", "description", "latest_version",
                  "created_by", "created_at", "updated_at"]
        read_only_fields = ["id", "slug", "latest_version", "created_by", "created_at", "updated_at"]


class BlueprintCreateSerializer(BlueprintSerializer):
    source: Any = serializers.CharField(max_length=200_000, write_only=True, trim_whitespace=False,
                                   help_text="The YAML of version 1.")
    note = serializers.CharField(max_length=300, write_only=True, required=False, allow_blank=True, default="")

    class Meta(BlueprintSerializer.Meta):
        fields = [*BlueprintSerializer.Meta.fields, "source", "note"]


class BlueprintUpdateSerializer(BlueprintSerializer):
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    name = serializers.CharField(max_length=100, required=False)


class BlueprintVersionSerializer(TenantModelSerializer):
    """One saved version of a blueprint: the YAML as written and the validated document. Never changes."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    blueprint: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    blueprint_name = serializers.CharField(source="blueprint.name", read_only=True)
    spec = serializers.JSONField(read_only=True)
    created_by: Any = UsernameField()

    class Meta:
        model = BlueprintVersion
        fields = ["id", "organization", "blueprint", "blueprint_name", "number", "source", "spec", "note",
                  "created_by", "created_at"]
        read_only_fields = fields


class BlueprintVersionCreateSerializer(StrictSerializer):
    source: Any = serializers.CharField(max_length=200_000, trim_whitespace=False, help_text="The YAML of the version.")
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class BlueprintValidateSerializer(StrictSerializer):
    source: Any = serializers.CharField(max_length=200_000, trim_whitespace=False, allow_blank=True,
                                   help_text="The YAML to check.")
    project = ScopedPrimaryKeyRelatedField(
        Project, "images.view", required=False,
        help_text="Check names (images, profiles) against this project's organisation; needed only when you "
        "belong to several organisations.",
    )


class BlueprintIssueSerializer(serializers.Serializer):
    line = serializers.IntegerField(allow_null=True, help_text="1-based line of the YAML, when known.")
    column = serializers.IntegerField(allow_null=True, help_text="1-based column, when known.")
    path = serializers.CharField(help_text="Where in the document, e.g. servers.web.image.")
    message = serializers.CharField()


class BlueprintValidationSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    issues = BlueprintIssueSerializer(many=True)


class BlueprintPreviewRequestSerializer(StrictSerializer):
    version = ScopedPrimaryKeyRelatedField(
        BlueprintVersion, "images.view", required=False, help_text="Id of a saved version (or give `source`)."
    )
    source: Any = serializers.CharField(max_length=200_000, trim_whitespace=False, required=False,
                                   help_text="Unsaved YAML (or give `version`).")
    project = ScopedPrimaryKeyRelatedField(Project, "images.view", help_text="The project it would launch in.")
    parameters = serializers.DictField(required=False, default=dict, help_text="Values of the blueprint's inputs.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("version")) == bool(attrs.get("source")):
            raise serializers.ValidationError({"version": ["Give either a saved version or a source."]})
        version = attrs.get("version")
        if version is not None and version.organization_id != attrs["project"].organization_id:
            raise serializers.ValidationError({"version": ["This version belongs to another organisation."]})
        return attrs


class PreviewInstanceSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="Instance name, e.g. web-1.")
    server = serializers.CharField(help_text="The server of the blueprint it comes from.")
    image = serializers.IntegerField(allow_null=True)
    image_name = serializers.CharField(allow_null=True)
    profile = serializers.IntegerField(allow_null=True)
    profile_name = serializers.CharField(allow_null=True)
    account = serializers.IntegerField(allow_null=True)
    account_name = serializers.CharField(allow_null=True)
    region = serializers.CharField(allow_blank=True)
    flavor = serializers.IntegerField(allow_null=True)
    flavor_name = serializers.CharField(allow_null=True)
    price_per_hour = price_field("Estimated price per hour (null: unknown).")
    problems = serializers.ListField(child=serializers.CharField())


class BlueprintPreviewSerializer(serializers.Serializer):
    instances = PreviewInstanceSerializer(many=True)
    price_hourly = price_field("Estimated total per hour.")
    price_monthly = price_field("Estimated total per month of 730 hours.", decimal_places=2)
    problems = serializers.ListField(child=serializers.CharField(), help_text="Everything that blocks a launch.")
    valid = serializers.BooleanField(help_text="Nothing blocks a launch.")


def _id_name(obj: Any) -> tuple[int | None, str | None]:
    return (obj.pk, str(obj)) if obj is not None else (None, None)


def preview_data(preview: Any) -> dict[str, Any]:
    instances = []
    for inst in preview.instances:
        image, image_name = _id_name(inst.image)
        profile, profile_name = _id_name(inst.profile)
        account, account_name = (inst.account.pk, inst.account.name) if inst.account is not None else (None, None)
        flavor, flavor_name = (inst.flavor.pk, inst.flavor.name) if inst.flavor is not None else (None, None)
        instances.append({
            "name": inst.name, "server": inst.server, "image": image, "image_name": image_name, "profile": profile,
            "profile_name": profile_name, "account": account, "account_name": account_name,
            "region": inst.region or "", "flavor": flavor, "flavor_name": flavor_name,
            "price_per_hour": inst.price_per_hour, "problems": list(inst.problems),
        })
    return {
        "instances": instances, "price_hourly": preview.hourly, "price_monthly": preview.monthly,
        "problems": list(preview.problems), "valid": not preview.problems,
    }


# --- catalog items --------------------------------------------------------------------------------------------
ITEM_FIELDS = [
    "id", "organization", "project", "project_name", "name", "slug", "summary", "description", "icon", "kind",
    "image", "image_name", "image_approved", "profile", "profile_name", "blueprint_version", "blueprint_name",
    "approval_threshold_monthly", "price_hourly_min", "price_hourly_max", "price_monthly_min", "price_monthly_max",
    "is_enabled", "published_to", "created_by", "created_at", "updated_at",
]


class CatalogItemSerializer(TenantModelSerializer):
    """What consumers launch: an image with a hardware profile, or a blueprint version. Prices are estimates over
    the clouds it can run on (strings, null when unknown). `published_to` is shown to its managers only."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = ScopedPrimaryKeyRelatedField(Project, "catalog.publish", help_text="Id of the managing project.")
    project_name = serializers.CharField(source="project.name", read_only=True)
    icon = enum_field([(i, i) for i in CatalogItem.ICONS], required=False, default="server")
    kind: Any = enum_field(CatalogItem.Kind.choices, help_text="image (image + profile) or blueprint.")
    image: Any = ScopedPrimaryKeyRelatedField(Image, "images.view", required=False, allow_null=True,
                                              help_text="Id of the image (kind image).")
    image_name = serializers.SerializerMethodField()
    image_approved = serializers.SerializerMethodField()
    profile: Any = ScopedPrimaryKeyRelatedField(HardwareProfile, "images.view", required=False, allow_null=True,
                                                help_text="Id of the hardware profile (kind image).")
    profile_name = serializers.SerializerMethodField()
    blueprint_version: Any = ScopedPrimaryKeyRelatedField(
        BlueprintVersion, "images.view", required=False, allow_null=True,
        help_text="Id of the blueprint version (kind blueprint).",
    )
    blueprint_name = serializers.SerializerMethodField()
    approval_threshold_monthly = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal(0), required=False, allow_null=True,
        help_text="Launches estimated above this per month need an approval (null: never; 0: always).",
    )
    price_hourly_min = price_field("Lowest estimated price per hour.")
    price_hourly_max = price_field("Highest estimated price per hour.")
    price_monthly_min = price_field("Lowest estimated price per month.", decimal_places=2)
    price_monthly_max = price_field("Highest estimated price per month.", decimal_places=2)
    is_enabled = serializers.BooleanField(read_only=True)
    published_to = serializers.SerializerMethodField(help_text="Ids of the projects it is published to.")
    created_by: Any = UsernameField()

    class Meta:
        model = CatalogItem
        fields = ITEM_FIELDS
        read_only_fields = ["id", "slug", "created_by", "created_at", "updated_at"]

    def get_image_name(self, obj: CatalogItem) -> str | None:
        return str(obj.image) if obj.image_id else None

    def get_image_approved(self, obj: CatalogItem) -> bool | None:
        return obj.image.is_approved if obj.image_id and obj.image else None

    def get_profile_name(self, obj: CatalogItem) -> str | None:
        return obj.profile.name if obj.profile_id and obj.profile else None

    def get_blueprint_name(self, obj: CatalogItem) -> str | None:
        version = obj.blueprint_version
        return f"{version.blueprint.name} v{version.number}" if version is not None else None

    def get_published_to(self, obj: CatalogItem) -> list[int]:
        user = request_user(self.context)
        if user is None or not get_access(user).can_on("catalog.publish", obj):
            return []
        return sorted(p.project_id for p in obj.publications.all())


class CatalogItemCreateSerializer(CatalogItemSerializer):
    publish_to = serializers.ManyRelatedField(
        child_relation=OrganizationProjectField("catalog.publish"), required=False, write_only=True,
        help_text="Ids of projects of the organisation to publish it to right away.",
    )

    class Meta(CatalogItemSerializer.Meta):
        fields = [*ITEM_FIELDS, "publish_to"]


class CatalogItemUpdateSerializer(CatalogItemSerializer):
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    kind: Any = serializers.CharField(read_only=True)
    name = serializers.CharField(max_length=100, required=False)
    icon = enum_field([(i, i) for i in CatalogItem.ICONS], required=False)


class PublishSerializer(StrictSerializer):
    projects = serializers.ManyRelatedField(
        child_relation=OrganizationProjectField("catalog.publish"), allow_empty=False,
        help_text="Ids of projects of the item's organisation.",
    )


class UnpublishSerializer(StrictSerializer):
    project = OrganizationProjectField("catalog.publish", help_text="Id of the project to withdraw it from.")


class EditorSerializer(serializers.Serializer):
    """A user allowed to change one image or blueprint by an object grant."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)
    name = serializers.CharField(source="display_name", read_only=True)


class EditorCreateSerializer(StrictSerializer):
    user = serializers.IntegerField(min_value=1, max_value=2**31 - 1,
                                    help_text="Id of a member of the row's organisation.")
