"""Query-string filters of the accounts API. They narrow an already scoped queryset; they never widen it."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Project
from apps.core.api.filters import organization_filter, project_filter


class ProjectFilter(django_filters.FilterSet):
    organization = organization_filter()
    archived = django_filters.BooleanFilter(
        field_name="is_archived", help_text="true: archived projects only."
    )

    class Meta:
        model = Project
        fields = ["organization", "archived"]


class MembershipFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    user = django_filters.CharFilter(field_name="user__username", lookup_expr="iexact", help_text="Username.")
    role = django_filters.CharFilter(field_name="role", help_text="Role name, e.g. admin or member.")

    class Meta:
        model = Membership
        fields = ["organization", "project", "user", "role"]


class InvitationFilter(django_filters.FilterSet):
    organization = organization_filter()
    project = project_filter()
    status = django_filters.ChoiceFilter(
        choices=[(s, s) for s in ("pending", "accepted", "revoked", "expired")],
        method="filter_status",
        help_text="pending, accepted, revoked or expired.",
    )

    class Meta:
        model = Invitation
        fields = ["organization", "project", "status"]

    def filter_status(self, queryset: Any, name: str, value: str) -> Any:
        now = timezone.now()
        if value == "accepted":
            return queryset.filter(accepted_at__isnull=False)
        if value == "revoked":
            return queryset.filter(accepted_at__isnull=True, revoked_at__isnull=False)
        open_ = queryset.filter(accepted_at__isnull=True, revoked_at__isnull=True)
        return open_.filter(expires_at__gt=now) if value == "pending" else open_.filter(expires_at__lte=now)


class ApiTokenFilter(django_filters.FilterSet):
    organization = organization_filter()
    user = django_filters.CharFilter(
        field_name="user__username", lookup_expr="iexact", help_text="Owner's username."
    )
    active = django_filters.BooleanFilter(method="filter_active", help_text="true: usable tokens only.")

    class Meta:
        model = ApiToken
        fields = ["organization", "user", "active"]

    def filter_active(self, queryset: Any, name: str, value: bool | None) -> Any:
        usable = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        return queryset.filter(usable) if value else queryset.exclude(usable)


class NotificationFilter(django_filters.FilterSet):
    organization = organization_filter()
    unread = django_filters.BooleanFilter(
        field_name="read_at", lookup_expr="isnull", help_text="true: unread only."
    )

    class Meta:
        model = Notification
        fields = ["organization", "unread"]
