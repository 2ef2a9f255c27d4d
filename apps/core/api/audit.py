"""Audit trail API: read-only, cursor-paged, and a streamed CSV export that is itself audited."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import django_filters
from django_filters.utils import translate_validation
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from apps.core.access import get_access
from apps.core.api.filters import organization_filter, project_filter
from apps.core.api.pagination import CreatedCursorPagination
from apps.core.api.serializers import TenantModelSerializer
from apps.core.api.views import TenantReadOnlyViewSet
from apps.core.exports import audit_export_response
from apps.core.models import AuditEvent

if TYPE_CHECKING:
    from apps.accounts.models import Organization, Project


class AuditEventSerializer(TenantModelSerializer):
    """One thing somebody (or the system) did."""

    organization: serializers.PrimaryKeyRelatedField[Organization] = serializers.PrimaryKeyRelatedField(read_only=True)
    project: serializers.PrimaryKeyRelatedField[Project] = serializers.PrimaryKeyRelatedField(read_only=True)
    actor = serializers.CharField(source="actor_label", read_only=True, help_text="Username, or `system`.")
    changes = serializers.JSONField(read_only=True, help_text='{"field": {"from": old, "to": new}}')

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "organization",
            "project",
            "actor",
            "verb",
            "object_type",
            "object_id",
            "object_label",
            "changes",
            "request_id",
            "ip",
        ]
        read_only_fields = fields


class AuditEventFilter(django_filters.FilterSet):
    """The same filters as apps.core.selectors.audit_events (which the audit pages use)."""

    organization = organization_filter()
    project = project_filter()
    actor = django_filters.CharFilter(
        field_name="actor_label", lookup_expr="iexact", help_text="Username or system."
    )
    verb = django_filters.CharFilter(
        lookup_expr="startswith", help_text="Verb or verb prefix, e.g. `membership.`."
    )
    object_type = django_filters.CharFilter(help_text="e.g. project, membership, apitoken.")
    object_id = django_filters.CharFilter(help_text="Id of the object the event is about.")
    since = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="Inclusive."
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="Exclusive."
    )

    class Meta:
        model = AuditEvent
        fields = ["organization", "project", "actor", "verb", "object_type", "object_id", "since", "until"]


class FirstRendererNegotiation(BaseContentNegotiation):
    """The export answers CSV whatever the Accept header says; errors still come back as JSON."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))  # a view always has at least one renderer
        return renderer, renderer.media_type


class AuditEventViewSet(TenantReadOnlyViewSet):
    """The audit trail of the organisations where you hold `audit.view`, newest first."""

    model = AuditEvent
    view_action = "audit.view"
    write_action = "audit.export"
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    pagination_class = CreatedCursorPagination

    @extend_schema(
        filters=True,
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="CSV, streamed.")},
        description="The filtered audit trail as CSV (needs `audit.export`). The export is itself audited.",
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="export",
        pagination_class=None,
        content_negotiation_class=FirstRendererNegotiation,
    )
    def export(self, request: Request) -> Any:
        user = self.user
        filterset = AuditEventFilter(
            request.query_params, queryset=AuditEvent.objects.for_user(user, "audit.export"), request=request
        )
        if not filterset.is_valid():
            raise translate_validation(filterset.errors)
        organization_id = filterset.form.cleaned_data.get("organization")
        access = get_access(user)
        if organization_id:
            if not access.can("audit.view", organization_id=organization_id):
                raise NotFound("Not found.")
            if not access.can("audit.export", organization_id=organization_id):
                raise PermissionDenied("You are not allowed to do this (audit.export).")
        elif not access.orgs_allowing("audit.export"):
            raise PermissionDenied("You are not allowed to do this (audit.export).")
        return audit_export_response(actor=user, events=filterset.qs, organization_id=organization_id)
