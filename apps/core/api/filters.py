"""Filter building blocks shared by the API's FilterSets."""

from __future__ import annotations

import django_filters
from django import forms
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(django_filters.NumberFilter):
    """An integer id (NumberFilter would accept 1.5 and quietly match id 1)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # beyond a 64-bit id the database would overflow (a 500): answer a 400 instead
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


def organization_filter() -> IdFilter:
    return IdFilter(field_name="organization_id", help_text="Only rows of this organisation id.")


def project_filter() -> IdFilter:
    return IdFilter(field_name="project_id", help_text="Only rows of this project id.")
