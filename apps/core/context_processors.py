"""What every page's frame needs: organisations for the switcher, the project context, persona navigation
and the unread notification count. Computed lazily, once per request, in a constant number of queries."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.http import HttpRequest

from apps.core.access import NO_ACCESS, Access
from apps.core.personas import Persona, personas_for


class Frame:
    def __init__(self, request: HttpRequest):
        self.request = request
        self.user = request.user
        self.access: Access = getattr(request, "access", NO_ACCESS)
        self.organization_id: int | None = getattr(request, "organization_id", None)

    @cached_property
    def organizations(self) -> list[Any]:
        from apps.accounts.models import Organization

        return list(Organization.objects.for_user(self.user).order_by("name"))

    @cached_property
    def organization(self) -> Any:
        return next((o for o in self.organizations if o.pk == self.organization_id), None)

    @cached_property
    def projects(self) -> list[Any]:
        from apps.accounts.models import Project

        if self.organization_id is None:
            return []
        return list(
            Project.objects.for_user(self.user).filter(organization_id=self.organization_id).order_by("name")
        )

    @cached_property
    def project(self) -> Any:
        project_id = self.request.session.get("project_id") if hasattr(self.request, "session") else None
        return next((p for p in self.projects if p.pk == project_id), None)

    @cached_property
    def personas(self) -> list[Persona]:
        return personas_for(self.access, self.organization_id)

    @cached_property
    def unread_count(self) -> int:
        from apps.accounts.models import Notification

        # all the user's organisations: the navbar's live counter is pushed per user, not per organisation
        return Notification.objects.for_user(self.user).filter(read_at__isnull=True).count()

    def can(self, action: str) -> bool:
        return self.access.can(action, organization_id=self.organization_id)


def get_frame(request: HttpRequest) -> Frame:
    """The request's frame, shared by the view and the templates so each query runs once."""
    frame = getattr(request, "_skyport_frame", None)
    if frame is None:
        frame = Frame(request)
        request._skyport_frame = frame  # type: ignore[attr-defined]
    return frame


def tenant(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"frame": get_frame(request)}
