"""Base API classes. Scoping happens here once, so no endpoint can forget it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django.db import models
from rest_framework import mixins, permissions, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request

from apps.core.access import get_access

if TYPE_CHECKING:
    from rest_framework.permissions import _PermissionClass

    from apps.accounts.models import User


def authenticated_user(request: Request) -> User:
    """`request.user` of a view that requires authentication (IsAuthenticated): never the anonymous user."""
    return cast("User", request.user)


class TokenScopePermission(permissions.BasePermission):
    """A read-only token can read, nothing else. Session users are unaffected."""

    message = "This API token is read-only: create a token with write scope to change things."

    def has_permission(self, request: Any, view: Any) -> bool:
        token = request.auth
        if request.method in permissions.SAFE_METHODS or token is None or not hasattr(token, "scope"):
            return True
        return token.scope == "write"


if TYPE_CHECKING:
    # the mixin is only ever combined with a GenericViewSet: type-check it as one (request, action, super() calls)
    _ViewSetBase = viewsets.GenericViewSet
else:
    _ViewSetBase = object


class TenantViewSetMixin(_ViewSetBase):
    """Querysets are scoped to the user's memberships with `view_action`; a row outside it answers 404.
    Writes need `write_action` on the object (or on the project/organisation named in the payload): 403."""

    model: ClassVar[type[models.Model]]
    view_action: ClassVar[str | None] = None
    write_action: ClassVar[str]
    permission_classes: Sequence[_PermissionClass] = [permissions.IsAuthenticated, TokenScopePermission]

    @property
    def user(self) -> User:
        """The signed-in user (every tenant route requires authentication)."""
        return authenticated_user(self.request)

    def get_queryset(self) -> Any:
        qs = self.model.objects.for_user(self.user, self.view_action)  # type: ignore[attr-defined]
        return self.optimize(qs)

    def optimize(self, qs: Any) -> Any:
        return qs

    def write_allowed(self, obj: Any) -> bool:
        return get_access(self.user).can_on(self.write_action, obj)

    def require_write(self, obj: Any) -> None:
        if not self.write_allowed(obj):
            raise PermissionDenied(f"You are not allowed to do this ({self.write_action}).")

    def check_object_permissions(self, request: Any, obj: Any) -> None:
        super().check_object_permissions(request, obj)
        if request.method not in permissions.SAFE_METHODS:
            self.require_write(obj)


class TenantReadOnlyViewSet(TenantViewSetMixin, viewsets.ReadOnlyModelViewSet):
    pass


class TenantViewSet(TenantViewSetMixin, viewsets.ModelViewSet):
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]


class TenantListCreateDestroyViewSet(
    TenantViewSetMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    pass
