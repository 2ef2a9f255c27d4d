"""Query-string filters of the clouds API. They narrow an already scoped queryset; they never widen it."""

from __future__ import annotations

import django_filters

from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.core.api.filters import IdFilter, organization_filter, project_filter


class CloudAccountFilter(django_filters.FilterSet):
    organization = organization_filter()
    kind = django_filters.CharFilter(field_name="kind", help_text="Provider type: sim, ec2, openstack, libcloud.")
    active = django_filters.BooleanFilter(field_name="is_active", help_text="false: deactivated accounts only.")
    health = django_filters.CharFilter(field_name="health", help_text="ok, degraded, failing or unknown.")

    class Meta:
        model = CloudAccount
        fields = ["organization", "kind", "active", "health"]


class CloudGrantFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    account = IdFilter(field_name="account_id", help_text="Only grants of this cloud account id.")
    live = django_filters.BooleanFilter(
        field_name="revoked_at", lookup_expr="isnull", help_text="true: live grants only; false: revoked ones."
    )

    class Meta:
        model = CloudGrant
        fields = ["organization", "project", "account", "live"]


class _SyncedFilter(django_filters.FilterSet):
    organization = organization_filter()
    account = IdFilter(field_name="account_id", help_text="Only rows of this cloud account id.")
    region = django_filters.CharFilter(field_name="region", help_text="Region name.")
    active = django_filters.BooleanFilter(
        field_name="is_active", help_text="false: rows the provider no longer lists."
    )


class FlavorFilter(_SyncedFilter):
    class Meta:
        model = Flavor
        fields = ["organization", "account", "region", "active"]


class CloudImageFilter(_SyncedFilter):
    class Meta:
        model = CloudImage
        fields = ["organization", "account", "region", "active"]


class NetworkFilter(_SyncedFilter):
    class Meta:
        model = Network
        fields = ["organization", "account", "region", "active"]
