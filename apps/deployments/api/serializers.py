"""Serializers of the deployments API. They validate and shape data; every write happens in a service
(apps.deployments.services, quota_services, hooks, reconciler).

Nothing secret is ever part of a response: no user data, no public key body, no hook secret (only its last four
characters), no cloud credentials, and launch parameters whose name looks like a secret are redacted. Operations show
only the parameters that identify what they act on."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.accounts.models import Organization, Project, User
from apps.catalog.blueprints import HOURS_PER_MONTH
from apps.catalog.models import CatalogItem
from apps.clouds.models import CloudAccount, CloudGrant, Operation
from apps.clouds.selectors import seconds_ago
from apps.core.api.serializers import (
    ScopedPrimaryKeyRelatedField,
    ScopedSlugRelatedField,
    StrictSerializer,
    TenantModelSerializer,
    request_user,
)
from apps.deployments import services
from apps.deployments.models import Approval, Deployment, Hook, HookDelivery, Instance, Quota

# operation parameters that say what an operation acts on; everything else (user data, keys, tags) stays private
SAFE_OPERATION_PARAMS = ("instance_id", "deployment_id", "server_id", "size_id")
BULK_ACTIONS = ("start", "stop", "reboot", "resize", "delete", "cancel", "retry")
BULK_MAX = 100


class UsernameField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "Username.")
        super().__init__(slug_field="username", read_only=True, **kwargs)


# a decimal as a string, like every price of the API (a float would not be exact)
MONTHLY = {"type": "string", "format": "decimal", "nullable": True, "pattern": r"^-?\d{0,12}(?:\.\d{0,2})?$"}


def monthly(hourly: Decimal | None) -> str | None:
    """The estimated price per month of 730 hours, to the cent."""
    return None if hourly is None else str((Decimal(hourly) * HOURS_PER_MONTH).quantize(Decimal("0.01")))


def price_field(help_text: str, decimal_places: int = 5) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=14, decimal_places=decimal_places, read_only=True, allow_null=True, help_text=help_text
    )


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class IdOrNameField(serializers.Field):
    """An integer id or a name (a slug, a username): resolved by the serializer, which knows where to look."""

    default_error_messages = {"invalid": "Give an id (a whole number) or a name."}

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, int):
            if data < 1 or data > 2**63 - 1:
                self.fail("invalid")
            return data
        if isinstance(data, str) and 0 < len(data.strip()) <= 254:
            text = data.strip()
            return int(text) if text.isdigit() and len(text) < 19 else text
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


redacted_parameters = services.redacted_parameters


# --- instances -------------------------------------------------------------------------------------------------
INSTANCE_FIELDS = [
    "id", "organization", "project", "deployment", "deployment_name", "name", "role", "index", "state",
    "state_changed_at", "owner", "account", "account_name", "region", "size", "flavor_id", "vcpus", "ram_mb", "disk_gb",
    "price_per_hour", "provider_server_id", "private_ips", "public_ips", "last_synced_at", "synced_seconds_ago",
    "error", "created_at", "updated_at",
]


class InstanceBriefSerializer(TenantModelSerializer):
    """One server of a deployment, as nested in the deployment."""

    state = serializers.CharField(read_only=True, help_text="pending, building, running, stopping, stopped, starting, "
                                  "rebooting, resizing, deleting, deleted or error.")
    account: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    private_ips = serializers.ListField(child=serializers.CharField(), read_only=True)
    public_ips = serializers.ListField(child=serializers.CharField(), read_only=True)
    synced_seconds_ago = serializers.SerializerMethodField(
        help_text="Seconds since Skyport last compared it with the provider (null: never)."
    )

    class Meta:
        model = Instance
        fields = ["id", "name", "role", "index", "state", "state_changed_at", "account", "account_name", "region",
                  "size", "flavor_id", "vcpus", "ram_mb", "disk_gb", "price_per_hour", "provider_server_id",
                  "private_ips", "public_ips", "last_synced_at", "synced_seconds_ago", "error"]
        read_only_fields = fields
        extra_kwargs = {"flavor_id": {"help_text": "The provider's flavor (instance type) the server runs on."}}

    def get_synced_seconds_ago(self, obj: Instance) -> int | None:
        return seconds_ago(obj.last_synced_at)


class InstanceSerializer(InstanceBriefSerializer):
    """One server: where it runs, its size, its addresses, how fresh Skyport's view of it is, and its error."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    deployment: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    owner: Any = UsernameField()

    class Meta(InstanceBriefSerializer.Meta):
        fields = INSTANCE_FIELDS
        read_only_fields = fields


# --- approvals -------------------------------------------------------------------------------------------------
class ApprovalBriefSerializer(TenantModelSerializer):
    """The approval a launch over its catalog item's threshold waits for."""

    state = serializers.CharField(read_only=True, help_text="pending, approved, rejected, expired or cancelled.")
    requested_by: Any = UsernameField()
    decided_by: Any = UsernameField()

    class Meta:
        model = Approval
        fields = ["id", "state", "reason", "requested_by", "decided_by", "comment", "expires_at", "decided_at"]
        read_only_fields = fields


class ApprovalSerializer(ApprovalBriefSerializer):
    """A launch request waiting for (or decided by) an approver of the organisation."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project_name = serializers.CharField(source="project.name", read_only=True)
    deployment: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    estimated_monthly = serializers.SerializerMethodField(help_text="Estimated price per month of the launch.")
    can_decide = serializers.SerializerMethodField(
        help_text="You may approve or reject it now (an approver, not the requester, and still pending)."
    )

    class Meta(ApprovalBriefSerializer.Meta):
        fields = ["id", "organization", "project", "project_name", "deployment", "deployment_name", "state", "reason",
                  "estimated_monthly", "requested_by", "decided_by", "comment", "expires_at", "decided_at",
                  "created_at", "can_decide"]
        read_only_fields = fields

    @extend_schema_field(MONTHLY)
    def get_estimated_monthly(self, obj: Approval) -> str | None:
        return monthly(obj.deployment.estimated_hourly)

    def get_can_decide(self, obj: Approval) -> bool:
        from apps.core.access import get_access

        user = request_user(self.context)
        if user is None or obj.state != Approval.State.PENDING:
            return False
        if user.pk in (obj.requested_by_id, obj.deployment.owner_id):
            return False
        return get_access(user).can_on("deployments.approve", obj)


class DecisionSerializer(StrictSerializer):
    comment = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="",
                                    help_text="Shown to the requester; required to reject.")


# --- deployments -----------------------------------------------------------------------------------------------
DEPLOYMENT_FIELDS = [
    "id", "organization", "project", "project_name", "name", "owner", "catalog_item", "catalog_item_name",
    "blueprint_version", "state", "state_message", "policy", "estimated_hourly", "estimated_monthly",
    "lease_expires_at", "lease_action", "instance_count", "approval_state", "sequence", "created_by", "created_at",
    "updated_at",
]


class DeploymentSerializer(TenantModelSerializer):
    """A launch: servers from a catalog item, with an owner, a placement, an estimated price and a lease."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project_name = serializers.CharField(source="project.name", read_only=True)
    owner: Any = UsernameField()
    catalog_item: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    catalog_item_name = serializers.SerializerMethodField()
    blueprint_version: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    state = serializers.CharField(read_only=True, help_text="requested, pending_approval, rejected, vetoed, "
                                  "provisioning, active, partially_failed, deleting, deleted or cancelled.")
    policy = serializers.CharField(read_only=True, help_text="account, cheapest, ordered or spread.")
    lease_action = serializers.CharField(read_only=True, help_text="What happens when the lease ends: stop, delete, "
                                         "or empty (nothing).")
    estimated_hourly = price_field("Estimated price per hour of every server (null: unknown).")
    estimated_monthly = serializers.SerializerMethodField(help_text="Estimated price per month of 730 hours.")
    instance_count = serializers.IntegerField(read_only=True, help_text="Servers not deleted.")
    approval_state = serializers.SerializerMethodField(help_text="The approval's state, null when none was needed.")
    sequence = serializers.IntegerField(read_only=True, help_text="Number of the last live event: a client that "
                                        "missed one reads the deployment again.")
    created_by: Any = UsernameField()

    class Meta:
        model = Deployment
        fields = DEPLOYMENT_FIELDS
        read_only_fields = fields

    def get_catalog_item_name(self, obj: Deployment) -> str | None:
        return obj.catalog_item.name if obj.catalog_item_id and obj.catalog_item else None

    @extend_schema_field(MONTHLY)
    def get_estimated_monthly(self, obj: Deployment) -> str | None:
        return monthly(obj.estimated_hourly)

    def _approval(self, obj: Deployment) -> Approval | None:
        try:
            return obj.approval
        except ObjectDoesNotExist:
            return None

    def get_approval_state(self, obj: Deployment) -> str | None:
        approval = self._approval(obj)
        return approval.state if approval is not None else None


class DeploymentDetailSerializer(DeploymentSerializer):
    """A deployment with its servers, the placement (the chosen clouds with their reasons, and every rejected cloud
    with why), its parameters and its approval."""

    parameters = serializers.SerializerMethodField(help_text="Launch parameters (secret-looking ones redacted).")
    placement = serializers.JSONField(read_only=True, help_text='{"policy", "servers": {role: {"chosen": [{"where", '
                                      '"reason", ...}], "rejected": [{"where", "reason"}], ...}}}')
    instances = InstanceBriefSerializer(many=True, read_only=True)
    approval = serializers.SerializerMethodField()

    class Meta(DeploymentSerializer.Meta):
        fields = [*DEPLOYMENT_FIELDS, "parameters", "placement", "ssh_key_name", "instances", "approval"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_parameters(self, obj: Deployment) -> Any:
        return redacted_parameters(obj.parameters)

    @extend_schema_field(ApprovalBriefSerializer(allow_null=True))
    def get_approval(self, obj: Deployment) -> dict[str, Any] | None:
        approval = self._approval(obj)
        return ApprovalBriefSerializer(approval, context=self.context).data if approval is not None else None


class DeploymentCreateSerializer(StrictSerializer):
    """A launch request. Give `cloud` (where it runs) or a `policy` (cheapest, ordered, spread)."""

    project = ScopedPrimaryKeyRelatedField(Project, "deployments.view", help_text="Id of the project.")
    catalog_item = IdOrNameField(help_text="Id or slug of a catalog item published to the project.")
    name = serializers.CharField(max_length=63, help_text="Lowercase letters, digits and '-', starting with a letter.")
    size = serializers.CharField(max_length=60, required=False, allow_blank=True, default="",
                                 help_text="A hardware profile's slug (single-server items only).")
    cloud = IdOrNameField(required=False, allow_null=True, default=None,
                          help_text="Id or slug of a cloud account granted to the project.")
    policy = serializers.ChoiceField(choices=Deployment.Policy.choices, required=False,
                                     help_text="cheapest (default), ordered or spread; `account` with `cloud`.")
    parameters = serializers.DictField(required=False, default=dict, help_text="Values of the blueprint's inputs.")
    ssh_key = IdOrNameField(required=False, allow_null=True, default=None,
                            help_text="Id or name of one of your SSH keys.")
    lease_days = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                          max_value=3650, help_text="Lease in days (the item's default when left "
                                          "out).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        project: Project = attrs["project"]
        user = request_user(self.context)
        attrs["item"] = self._catalog_item(user, project, attrs.pop("catalog_item"))
        attrs["account"] = self._cloud(project, attrs.pop("cloud"))
        if attrs["account"] is not None:
            if attrs.get("policy") not in (None, Deployment.Policy.ACCOUNT):
                raise serializers.ValidationError({"policy": ["Give a cloud or a policy, not both."]})
            attrs["policy"] = Deployment.Policy.ACCOUNT
        else:
            attrs.setdefault("policy", Deployment.Policy.CHEAPEST)
        attrs["size"] = attrs.get("size") or None
        return attrs

    def _catalog_item(self, user: User | None, project: Project, value: int | str) -> CatalogItem:
        # the launch checks read the item's image and profile: one join instead of two queries
        items = CatalogItem.objects.for_user(user, "catalog.view").filter(
            organization_id=project.organization_id).select_related("image", "profile")
        found = items.filter(pk=value).first() if isinstance(value, int) else items.filter(slug__iexact=value).first()
        if found is None:
            raise serializers.ValidationError({"catalog_item": [f"No catalog item '{value}' is offered to you."]})
        return found

    def _cloud(self, project: Project, value: int | str | None) -> CloudAccount | None:
        if value is None:
            return None
        # what the project was granted: the placement explains why a granted cloud cannot take a server
        granted = CloudGrant.objects.all_tenants().filter(project_id=project.pk, revoked_at__isnull=True)
        accounts = CloudAccount.objects.all_tenants().filter(
            organization_id=project.organization_id, is_active=True, pk__in=granted.values("account_id")
        )
        found = accounts.filter(pk=value).first() if isinstance(value, int) else accounts.filter(
            slug__iexact=value).first()
        if found is None:
            raise serializers.ValidationError({"cloud": [f"No cloud account '{value}' is granted to this project."]})
        return found


class SizeSerializer(StrictSerializer):
    size = serializers.CharField(max_length=60, help_text="The hardware profile's slug to resize to.")


class ExtendSerializer(StrictSerializer):
    lease_days = serializers.IntegerField(min_value=1, max_value=3650, help_text="New lease, in days from now.")


class TransferSerializer(StrictSerializer):
    owner = IdOrNameField(help_text="Id or username of a member of the project who may launch there.")


class EmptySerializer(StrictSerializer):
    """No body (or an empty object)."""


class BulkSerializer(StrictSerializer):
    ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), allow_empty=False,
                                max_length=BULK_MAX, help_text=f"Deployment ids (at most {BULK_MAX}).")
    action = serializers.ChoiceField(choices=[(a, a) for a in BULK_ACTIONS], help_text=", ".join(BULK_ACTIONS) + ".")
    size = serializers.CharField(max_length=60, required=False, allow_blank=True, default="",
                                 help_text="With resize: the hardware profile's slug.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["ids"] = list(dict.fromkeys(attrs["ids"]))
        if attrs["action"] == "resize" and not attrs["size"]:
            raise serializers.ValidationError({"size": ["Choose the size to resize to."]})
        return attrs


@extend_schema_field({
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string", "description": "not_found, permission_denied or invalid."},
                   "message": {"type": "string"},
                   "fields": {"type": "object",
                              "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
})
class ErrorField(serializers.DictField):
    """The error one id would have had alone, in the shape of the API's error body."""


class BulkResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ok = serializers.BooleanField()
    state = serializers.CharField(required=False, help_text="The deployment's state after the action.")
    error = ErrorField(required=False)


class BulkResponseSerializer(serializers.Serializer):
    action = serializers.CharField()
    results = BulkResultSerializer(many=True)


class ConsoleSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="url (open it in a browser) or log (the console output).")
    url = serializers.CharField(required=False)
    output = serializers.CharField(required=False)


def console_data(console: Any) -> dict[str, Any]:
    if console.kind == "url":
        return {"kind": "url", "url": console.url}
    return {"kind": "log", "output": console.output}


# --- quotas ----------------------------------------------------------------------------------------------------
class QuotaUsedSerializer(serializers.Serializer):
    instances = serializers.IntegerField()
    vcpus = serializers.IntegerField()
    ram_mb = serializers.IntegerField()
    disk_gb = serializers.IntegerField()


def limit_field(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True,
                                    help_text=f"{help_text} (null: no limit).")


QUOTA_FIELDS = ["id", "organization", "project", "project_name", "user", "scope", "scope_label", "max_instances",
                "max_vcpus", "max_ram_mb", "max_disk_gb", "used", "updated_by", "updated_at"]
LIMIT_FIELDS = ["max_instances", "max_vcpus", "max_ram_mb", "max_disk_gb"]


def _users_of_my_organisations(user: Any) -> Any:
    from apps.accounts.api.serializers import users_sharing_an_organisation

    return users_sharing_an_organisation(user)


class QuotaSerializer(TenantModelSerializer):
    """Limits for the whole organisation, one project, or one user in the organisation; `used` is what the
    deployments hold against it now. Every applicable quota must hold for a launch."""

    organization: Any = ScopedPrimaryKeyRelatedField(
        Organization, required=False, help_text="Id of the organisation (may be left out when `project` is given)."
    )
    project: Any = ScopedPrimaryKeyRelatedField(
        Project, "deployments.view", required=False, allow_null=True, help_text="Id of the project (project quota)."
    )
    project_name = serializers.SerializerMethodField()
    user: Any = ScopedSlugRelatedField(
        slug_field="username", queryset_for=_users_of_my_organisations, model=User, required=False, allow_null=True,
        help_text="Username (a quota for one user in the organisation).",
    )
    scope = serializers.SerializerMethodField(help_text="organization, project or user.")
    scope_label = serializers.CharField(read_only=True)
    max_instances = limit_field("Servers")
    max_vcpus = limit_field("vCPUs")
    max_ram_mb = limit_field("RAM in MiB")
    max_disk_gb = limit_field("Disk in GB")
    used = serializers.SerializerMethodField()
    updated_by: Any = UsernameField()

    class Meta:
        model = Quota
        fields = QUOTA_FIELDS
        read_only_fields = ["id", "scope_label", "updated_by", "updated_at"]

    def get_project_name(self, obj: Quota) -> str | None:
        return obj.project.name if obj.project_id and obj.project else None

    def get_scope(self, obj: Quota) -> str:
        return "project" if obj.project_id else "user" if obj.user_id else "organization"

    @extend_schema_field(QuotaUsedSerializer)
    def get_used(self, obj: Quota) -> dict[str, int]:
        used = self.context.get("quota_used") or {}
        if obj.pk not in used:
            from apps.deployments.quota_services import quotas_used

            used = quotas_used([obj])
        return used[obj.pk]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        project, user = attrs.get("project"), attrs.get("user")
        if attrs.get("organization") is None:
            if project is None:
                raise serializers.ValidationError({"organization": ["This field is required."]})
            attrs["organization"] = project.organization
        if project is not None and user is not None:
            raise serializers.ValidationError({"user": ["A quota is for one project or one user, not both."]})
        return attrs


class QuotaUpdateSerializer(QuotaSerializer):
    """The limits of a quota (its scope never changes)."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    user: Any = UsernameField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return attrs


# --- hooks -----------------------------------------------------------------------------------------------------
HOOK_FIELDS = ["id", "organization", "name", "url", "phase", "secret", "secret_last4", "timeout_seconds",
               "allow_on_failure", "is_enabled", "created_by", "created_at", "updated_at"]


class HookSerializer(TenantModelSerializer):
    """An HTTP endpoint told about launches. `secret` (at least 16 characters) signs every request; it is
    write-only: answers show its last four characters only."""

    organization: Any = ScopedPrimaryKeyRelatedField(Organization, help_text="Id of the organisation.")
    phase = serializers.ChoiceField(choices=Hook.Phase.choices, help_text="before_launch (may veto) or after_launch.")
    url = serializers.CharField(max_length=500, help_text="https:// URL the hook calls.")
    secret = serializers.CharField(max_length=256, write_only=True, trim_whitespace=False,
                                   style={"input_type": "password"}, help_text="Signs the requests. Write-only.")
    timeout_seconds = serializers.IntegerField(required=False, default=5, help_text="1 to 30 seconds.")
    allow_on_failure = serializers.BooleanField(
        required=False, default=False, help_text="before_launch: let launches through when the hook fails."
    )
    is_enabled = serializers.BooleanField(required=False, default=True)
    created_by: Any = UsernameField()

    class Meta:
        model = Hook
        fields = HOOK_FIELDS
        read_only_fields = ["id", "secret_last4", "created_by", "created_at", "updated_at"]


class HookUpdateSerializer(HookSerializer):
    """The fields of a hook that can change; a new `secret` rotates it."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    name = serializers.CharField(max_length=100, required=False)
    url = serializers.CharField(max_length=500, required=False)
    phase = serializers.ChoiceField(choices=Hook.Phase.choices, required=False)
    secret = serializers.CharField(max_length=256, write_only=True, required=False, trim_whitespace=False,
                                   style={"input_type": "password"}, help_text="A new secret. Write-only.")
    timeout_seconds = serializers.IntegerField(required=False)
    allow_on_failure = serializers.BooleanField(required=False)
    is_enabled = serializers.BooleanField(required=False)


class HookDeliverySerializer(TenantModelSerializer):
    """One call of a hook: what was sent (never the signature), the answer's status, how long it took."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    hook: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    hook_name = serializers.CharField(source="hook.name", read_only=True)
    deployment: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    state = serializers.CharField(read_only=True, help_text="pending, delivered, vetoed or failed.")
    payload = serializers.JSONField(read_only=True)

    class Meta:
        model = HookDelivery
        fields = ["id", "organization", "hook", "hook_name", "deployment", "event", "delivery_id", "state",
                  "attempts", "status_code", "message", "duration_ms", "next_attempt_at", "payload", "created_at",
                  "finished_at"]
        read_only_fields = fields


# --- operations ------------------------------------------------------------------------------------------------
class OperationParamsSerializer(serializers.Serializer):
    instance_id = serializers.IntegerField(required=False)
    deployment_id = serializers.IntegerField(required=False)
    server_id = serializers.CharField(required=False)
    size_id = serializers.CharField(required=False)


class OperationSerializer(TenantModelSerializer):
    """A provider operation of a deployment's server: its steps, attempts and error. Only the parameters that say
    what it acts on are shown."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    project: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    state = serializers.CharField(read_only=True, help_text="pending, running, succeeded or failed.")
    steps = serializers.ListField(child=serializers.CharField(), read_only=True)
    progress = serializers.SerializerMethodField(help_text="0-100: the share of its steps done.")
    params = serializers.SerializerMethodField()
    created_by: Any = UsernameField()

    class Meta:
        model = Operation
        fields = ["id", "organization", "project", "account", "account_name", "region", "kind", "state", "step",
                  "steps", "progress", "attempt", "max_attempts", "params", "error", "error_kind", "next_attempt_at",
                  "created_by", "created_at", "updated_at", "finished_at"]
        read_only_fields = fields

    def get_progress(self, obj: Operation) -> int:
        if obj.state == Operation.State.SUCCEEDED:
            return 100
        steps = obj.steps or []
        return int(100 * min(obj.step, len(steps)) / len(steps)) if steps else 0

    @extend_schema_field(OperationParamsSerializer)
    def get_params(self, obj: Operation) -> dict[str, Any]:
        params = obj.params or {}
        return {k: params[k] for k in SAFE_OPERATION_PARAMS if k in params}

