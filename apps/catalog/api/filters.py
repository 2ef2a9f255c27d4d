"""Query-string filters of the catalog API. They narrow an already scoped queryset; they never widen it."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q

from apps.catalog.models import (
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)
from apps.core.api.filters import IdFilter, organization_filter, project_filter


def _search(fields: tuple[str, ...]) -> Any:
    def method(queryset: Any, name: str, value: str) -> Any:
        value = value.strip()
        if not value:
            return queryset
        query = Q()
        for field in fields:
            query |= Q(**{f"{field}__icontains": value})
        return queryset.filter(query)

    return method


class ImageFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    state = django_filters.ChoiceFilter(choices=Image.State.choices, help_text="importing, ready or failed.")
    approval = django_filters.ChoiceFilter(choices=Image.Approval.choices, help_text="pending, approved or revoked.")
    arch = django_filters.CharFilter(field_name="arch", help_text="x86_64 or arm64.")
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name, OS or description.")

    class Meta:
        model = Image
        fields = ["organization", "project", "state", "approval", "arch", "search"]

    def filter_search(self, queryset: Any, name: str, value: str) -> Any:
        return _search(("name", "os", "description"))(queryset, name, value)


class ImageCopyFilter(django_filters.FilterSet):
    organization = organization_filter()
    image = IdFilter(field_name="image_id", help_text="Only copies of this image id.")
    account = IdFilter(field_name="account_id", help_text="Only copies in this cloud account id.")
    region = django_filters.CharFilter(field_name="region", help_text="Region name.")
    state = django_filters.ChoiceFilter(
        choices=ImageCopy.State.choices, help_text="pending, converting, uploading, available or failed."
    )
    active = django_filters.BooleanFilter(method="filter_active", help_text="true: pushes still running.")

    class Meta:
        model = ImageCopy
        fields = ["organization", "image", "account", "region", "state", "active"]

    def filter_active(self, queryset: Any, name: str, value: bool | None) -> Any:
        if value is None:
            return queryset
        states = sorted(ImageCopy.ACTIVE_STATES)
        return queryset.filter(state__in=states) if value else queryset.exclude(state__in=states)


class ImageShareFilter(django_filters.FilterSet):
    image = IdFilter(field_name="image_id", help_text="Only shares of this image id.")
    project = project_filter()

    class Meta:
        model = ImageShare
        fields = ["image", "project"]


class HardwareProfileFilter(django_filters.FilterSet):
    organization = organization_filter()
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name or description.")

    class Meta:
        model = HardwareProfile
        fields = ["organization", "search"]

    def filter_search(self, queryset: Any, name: str, value: str) -> Any:
        return _search(("name", "description"))(queryset, name, value)


class BlueprintFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name or description.")

    class Meta:
        model = Blueprint
        fields = ["organization", "project", "search"]

    def filter_search(self, queryset: Any, name: str, value: str) -> Any:
        return _search(("name", "description"))(queryset, name, value)


class BlueprintVersionFilter(django_filters.FilterSet):
    organization = organization_filter()
    blueprint = IdFilter(field_name="blueprint_id", help_text="Only versions of this blueprint id.")

    class Meta:
        model = BlueprintVersion
        fields = ["organization", "blueprint"]


class CatalogItemFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = IdFilter(method="filter_project", help_text="Only items published to this project id.")
    owner_project = IdFilter(field_name="project_id", help_text="Only items managed by this project id.")
    kind = django_filters.ChoiceFilter(choices=CatalogItem.Kind.choices, help_text="image or blueprint.")
    enabled = django_filters.BooleanFilter(field_name="is_enabled", help_text="false: disabled items only.")
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name, summary or description.")

    class Meta:
        model = CatalogItem
        fields = ["organization", "project", "owner_project", "kind", "enabled", "search"]

    def filter_project(self, queryset: Any, name: str, value: int) -> Any:
        return queryset.filter(publications__project_id=value)

    def filter_search(self, queryset: Any, name: str, value: str) -> Any:
        return _search(("name", "summary", "description"))(queryset, name, value)
