"""Who may change a catalog row: the role table first (images.manage / catalog.publish in the owner project, or
an org role allowing it), then django-guardian object grants for the cases roles cannot express (a designer of
another project allowed to edit one blueprint or one image)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied

from apps.core.access import get_access

# model name → guardian permission codename that grants changes on one row
OBJECT_PERMISSIONS = {"image": "catalog.manage_image", "blueprint": "catalog.manage_blueprint"}


def can_change(user: Any, obj: Any, action: str = "images.manage") -> bool:
    if get_access(user).can_on(action, obj):
        return True
    perm = OBJECT_PERMISSIONS.get(obj._meta.model_name)
    # an object grant counts only while the user still belongs to the organisation
    return bool(
        perm
        and obj.organization_id in get_access(user).organization_ids
        and user.has_perm(perm, obj)
    )


def require_change(user: Any, obj: Any, action: str = "images.manage") -> None:
    """403 unless `user` may change `obj` (visibility, the 404, is the caller's scoped query's job)."""
    if not can_change(user, obj, action):
        raise PermissionDenied(f"You are not allowed to change this ({action}).")


def editors_of(obj: Any) -> list[Any]:
    """Users holding an object grant to change `obj` who are still active members of its organisation (a grant
    counts only while they belong to it: see can_change)."""
    from guardian.shortcuts import get_users_with_perms

    perm = OBJECT_PERMISSIONS[obj._meta.model_name].split(".", 1)[1]
    holders = get_users_with_perms(obj, only_with_perms_in=[perm], with_group_users=False)
    ids = [getattr(u, "pk", None) for u in holders]
    return list(organization_members(obj.organization_id).filter(pk__in=ids).order_by("username"))


def organization_members(organization_id: int) -> Any:
    """Active users with a live membership in the organisation."""
    from django.db.models import Q
    from django.utils import timezone

    from apps.accounts.models import Membership, User

    live = Membership.objects.all_tenants().filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), organization_id=organization_id
    )
    return User.objects.filter(is_active=True, pk__in=live.values("user_id")).distinct()


def object_grants_drop(*, user: Any, organization_id: int) -> int:
    """Delete the user's edit grants on rows of an organisation they left, so that joining again later does not
    bring them back. Returns how many were dropped."""
    from guardian.models import UserObjectPermission

    from apps.catalog.models import Blueprint, Image
    from apps.deployments.models import Deployment

    dropped = 0
    for model in (Image, Blueprint, Deployment):  # edit grants, and grants to operate somebody's deployment
        rows = model._base_manager.filter(organization_id=organization_id)
        ids = [str(pk) for pk in rows.values_list("pk", flat=True)]
        if ids:
            deleted, _ = UserObjectPermission.objects.filter(
                user=user, content_type__app_label=model._meta.app_label, content_type__model=model._meta.model_name,
                object_pk__in=ids,
            ).delete()
            dropped += deleted
    return dropped
