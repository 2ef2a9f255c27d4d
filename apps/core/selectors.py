"""Reads of the core app, always scoped by the actor."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import Q

from apps.core.models import AuditEvent
from apps.core.tenancy import ScopedQuerySet

AUDIT_FILTERS = ("organization", "project", "actor", "verb", "object_type", "object_id", "since", "until", "q")


def audit_events(user: Any, *, action: str = "audit.view", **filters: Any) -> ScopedQuerySet:
    """Audit events the user may see, filtered. Filters: organization, project, actor (username), verb (prefix),
    object_type, object_id, since/until (datetimes, inclusive/exclusive), q (free text on labels)."""
    qs = AuditEvent.objects.for_user(user, action).select_related("project")
    if filters.get("organization"):
        qs = qs.filter(organization_id=filters["organization"])
    if filters.get("project"):
        qs = qs.filter(project_id=filters["project"])
    if filters.get("actor"):
        qs = qs.filter(actor_label__iexact=filters["actor"])
    if filters.get("verb"):
        qs = qs.filter(verb__startswith=filters["verb"])
    if filters.get("object_type"):
        qs = qs.filter(object_type=filters["object_type"])
    if filters.get("object_id"):
        qs = qs.filter(object_id=str(filters["object_id"]))
    since: datetime.datetime | None = filters.get("since")
    until: datetime.datetime | None = filters.get("until")
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    if filters.get("q"):
        q = filters["q"]
        qs = qs.filter(Q(object_label__icontains=q) | Q(actor_label__icontains=q) | Q(verb__icontains=q))
    return qs.order_by("-created_at", "-id")
