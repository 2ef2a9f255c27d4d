"""Query-string filters of the deployments API. They narrow an already scoped queryset; they never widen it."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q

from apps.clouds.models import Operation
from apps.core.api.filters import IdFilter, organization_filter, project_filter
from apps.deployments.models import Approval, Deployment, Hook, HookDelivery, Instance, Quota
from apps.deployments.states import DeploymentState, InstanceState


def _user_filter(field: str) -> django_filters.CharFilter:
    return django_filters.CharFilter(method=f"filter_{field}", help_text="Username, or the user's id.")


def _by_user(queryset: Any, field: str, value: str) -> Any:
    value = value.strip()
    if not value:
        return queryset
    if value.isdigit():
        return queryset.filter(**{f"{field}_id": int(value)}) if int(value) < 2**63 else queryset.none()
    return queryset.filter(**{f"{field}__username__iexact": value})


class DeploymentFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    # a column of the row itself: no duplicates to remove (django-filter's default DISTINCT makes the page's COUNT
    # compare whole rows, which grows with the table)
    state = django_filters.MultipleChoiceFilter(
        choices=DeploymentState.choices, distinct=False,
        help_text="One state, or several (`?state=active&state=partially_failed`).",
    )
    owner = _user_filter("owner")
    catalog_item = IdFilter(field_name="catalog_item_id", help_text="Only deployments of this catalog item id.")
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name.")

    class Meta:
        model = Deployment
        fields = ["organization", "project", "state", "owner", "catalog_item", "search"]

    def filter_owner(self, queryset: Any, name: str, value: str) -> Any:
        return _by_user(queryset, "owner", value)

    def filter_search(self, queryset: Any, name: str, value: str) -> Any:
        value = value.strip()
        return queryset.filter(name__icontains=value) if value else queryset


class InstanceFilter(django_filters.FilterSet):
    organization = organization_filter()
    deployment = IdFilter(field_name="deployment_id", help_text="Only instances of this deployment id.")
    project = project_filter()
    state = django_filters.MultipleChoiceFilter(choices=InstanceState.choices, distinct=False,
                                                help_text="One state, or several.")
    account = IdFilter(field_name="account_id", help_text="Only instances in this cloud account id.")
    region = django_filters.CharFilter(field_name="region", help_text="Region name.")

    class Meta:
        model = Instance
        fields = ["organization", "deployment", "project", "state", "account", "region"]


class QuotaFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    user = _user_filter("user")
    scope = django_filters.ChoiceFilter(
        choices=[("organization", "organization"), ("project", "project"), ("user", "user")],
        method="filter_scope", help_text="organization, project or user.",
    )

    class Meta:
        model = Quota
        fields = ["organization", "project", "user", "scope"]

    def filter_user(self, queryset: Any, name: str, value: str) -> Any:
        return _by_user(queryset, "user", value)

    def filter_scope(self, queryset: Any, name: str, value: str) -> Any:
        if value == "project":
            return queryset.filter(project__isnull=False)
        if value == "user":
            return queryset.filter(user__isnull=False)
        if value == "organization":
            return queryset.filter(project__isnull=True, user__isnull=True)
        return queryset


class HookFilter(django_filters.FilterSet):
    organization = organization_filter()
    phase = django_filters.ChoiceFilter(choices=Hook.Phase.choices, help_text="before_launch or after_launch.")
    enabled = django_filters.BooleanFilter(field_name="is_enabled", help_text="false: disabled hooks only.")

    class Meta:
        model = Hook
        fields = ["organization", "phase", "enabled"]


class HookDeliveryFilter(django_filters.FilterSet):
    organization = organization_filter()
    hook = IdFilter(field_name="hook_id", help_text="Only deliveries of this hook id.")
    deployment = IdFilter(field_name="deployment_id", help_text="Only deliveries about this deployment id.")
    state = django_filters.ChoiceFilter(
        choices=HookDelivery.State.choices, help_text="pending, delivered, vetoed or failed."
    )
    event = django_filters.CharFilter(
        field_name="event", help_text="before_launch, instance.running, deployment.deleted or test."
    )

    class Meta:
        model = HookDelivery
        fields = ["organization", "hook", "deployment", "state", "event"]


class ApprovalFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    deployment = IdFilter(field_name="deployment_id", help_text="The approval of this deployment id.")
    state = django_filters.ChoiceFilter(
        choices=Approval.State.choices, help_text="pending, approved, rejected, expired or cancelled."
    )

    class Meta:
        model = Approval
        fields = ["organization", "project", "deployment", "state"]


class OperationFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    deployment = IdFilter(method="filter_deployment", help_text="Only operations of this deployment's servers.")
    instance = IdFilter(method="filter_instance", help_text="Only operations of this instance id.")
    account = IdFilter(field_name="account_id", help_text="Only operations in this cloud account id.")
    state = django_filters.ChoiceFilter(
        choices=Operation.State.choices, help_text="pending, running, succeeded or failed."
    )
    kind = django_filters.CharFilter(
        field_name="kind", help_text="create_server, start_server, stop_server, reboot_server, resize_server, "
        "delete_server."
    )

    class Meta:
        model = Operation
        fields = ["organization", "project", "deployment", "instance", "account", "state", "kind"]

    def filter_deployment(self, queryset: Any, name: str, value: int) -> Any:
        # create operations name their deployment; the others name the instance only. The deployment's instances
        # are read through the same scoping as the operations (an invisible deployment has none)
        instances = list(
            Instance.objects.for_user(self.request.user, "deployments.view")
            .filter(deployment_id=value).values_list("pk", flat=True)
        )
        return queryset.filter(Q(params__deployment_id=value) | Q(params__instance_id__in=instances))

    def filter_instance(self, queryset: Any, name: str, value: int) -> Any:
        return queryset.filter(params__instance_id=value)
