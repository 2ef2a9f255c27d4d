"""Serializers of the clouds API. Credentials are write-only: accepted on create, update and rotation, and never
part of any response (only `credentials_fingerprint` and `credentials_hint`, the last four characters)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.accounts.models import Organization, Project
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.clouds.selectors import seconds_ago
from apps.clouds.services import PROVIDERS
from apps.core.api.serializers import ScopedPrimaryKeyRelatedField, StrictSerializer, TenantModelSerializer


def credentials_field(**kwargs: Any) -> serializers.DictField:
    return serializers.DictField(
        child=serializers.CharField(max_length=4096, trim_whitespace=True),
        write_only=True,
        style={"input_type": "password"},
        **kwargs,
    )


class CloudAccountSerializer(TenantModelSerializer):
    """A cloud account of an organisation. `credentials` is write-only."""

    organization: Any = ScopedPrimaryKeyRelatedField(
        Organization, "clouds.manage", help_text="Id of the organisation."
    )
    kind: Any = serializers.ChoiceField(choices=sorted(PROVIDERS), help_text="Provider type.")
    regions = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)
    options = serializers.DictField(required=False, help_text="Provider settings (never secrets).")
    credentials = credentials_field(
        help_text="sim: api_key; ec2: access_key, secret_key; openstack: username, password; libcloud: key, secret. "
        "Write-only."
    )
    synced_seconds_ago = serializers.SerializerMethodField()

    class Meta:
        model = CloudAccount
        fields = [
            "id", "organization", "name", "slug", "kind", "endpoint", "regions", "default_region", "options",
            "credentials", "credentials_fingerprint", "credentials_hint", "health", "health_message",
            "last_success_at", "last_failure_at", "last_sync_at", "synced_seconds_ago", "is_active", "created_at",
        ]
        read_only_fields = [
            "id", "slug", "credentials_fingerprint", "credentials_hint", "health", "health_message",
            "last_success_at", "last_failure_at", "last_sync_at", "is_active", "created_at",
        ]

    def get_synced_seconds_ago(self, obj: CloudAccount) -> int | None:
        return seconds_ago(obj.last_sync_at)


class CloudAccountUpdateSerializer(CloudAccountSerializer):
    """The fields of an account that can change. A new endpoint needs `credentials` again."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    kind: Any = serializers.CharField(read_only=True)
    credentials = credentials_field(required=False, help_text="Required when the endpoint changes. Write-only.")


class CredentialsSerializer(StrictSerializer):
    credentials = credentials_field(help_text="The new credentials (all fields of the provider type).")


class HealthSerializer(serializers.Serializer):
    health = serializers.CharField()
    health_message = serializers.CharField()
    last_success_at = serializers.DateTimeField(allow_null=True)
    last_failure_at = serializers.DateTimeField(allow_null=True)
    last_sync_at = serializers.DateTimeField(allow_null=True)
    synced_seconds_ago = serializers.IntegerField(allow_null=True)


class SyncQueuedSerializer(serializers.Serializer):
    queued = serializers.BooleanField()
    account = serializers.IntegerField()


class CloudGrantSerializer(TenantModelSerializer):
    """A cloud account delegated to a project (all regions when `regions` is empty). DELETE revokes."""

    organization: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account = ScopedPrimaryKeyRelatedField(CloudAccount, "grants.manage", help_text="Id of the cloud account.")
    project = ScopedPrimaryKeyRelatedField(Project, "grants.manage", help_text="Id of the project.")
    regions = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)
    granted_by: Any = serializers.SlugRelatedField(slug_field="username", read_only=True)
    revoked_by: Any = serializers.SlugRelatedField(slug_field="username", read_only=True)
    is_live = serializers.BooleanField(read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    project_name = serializers.CharField(source="project.name", read_only=True)

    class Meta:
        model = CloudGrant
        fields = ["id", "organization", "account", "account_name", "project", "project_name", "regions", "granted_by",
                  "created_at", "revoked_at",
                  "revoked_by", "is_live"]
        read_only_fields = ["id", "created_at", "revoked_at"]


class _SyncedSerializer(TenantModelSerializer):
    account: Any = serializers.PrimaryKeyRelatedField(read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    synced_seconds_ago = serializers.SerializerMethodField()

    def get_synced_seconds_ago(self, obj: Any) -> int | None:
        return seconds_ago(obj.synced_at)


SYNCED = ["id", "account", "account_name", "region", "provider_id", "name", "is_active", "synced_at",
          "synced_seconds_ago"]


class FlavorSerializer(_SyncedSerializer):
    """A size of a cloud account in one region. `price_override_per_hour` (PATCH, clouds.manage) beats the
    provider's price; `price_per_hour` is the one in force."""

    price_per_hour = serializers.DecimalField(max_digits=10, decimal_places=5, read_only=True, allow_null=True)

    class Meta:
        model = Flavor
        fields = [*SYNCED, "vcpus", "ram_mb", "disk_gb", "arch", "gpus", "provider_price_per_hour",
                  "price_override_per_hour", "price_per_hour"]
        read_only_fields = [f for f in fields if f != "price_override_per_hour"]


class CloudImageSerializer(_SyncedSerializer):
    """An image a cloud account offers in one region (filtered by the account's image options)."""

    class Meta:
        model = CloudImage
        fields = [*SYNCED, "os", "arch", "owner", "is_public", "status", "min_disk_gb", "disk_format"]
        read_only_fields = fields


class NetworkSerializer(_SyncedSerializer):
    """A network of a cloud account in one region."""

    class Meta:
        model = Network
        fields = [*SYNCED, "cidr", "is_external"]
        read_only_fields = fields
