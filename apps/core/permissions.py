from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError

from apps.core.access import get_access


def require(actor: Any, action: str, obj: Any) -> None:
    """403 unless the actor may do `action` on `obj`. Visibility (404) is the caller's scoped query's job."""
    if not get_access(actor).can_on(action, obj):
        raise PermissionDenied(f"You are not allowed to do this ({action}).")


class ServiceError(ValidationError):
    """A write refused for a reason the person can act on. Pages show it as a form error, the API as a 400."""
