"""Reads about catalog images, always scoped by the user (`images.view`), in a fixed number of queries."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet

from apps.catalog.models import Image, ImageCopy, ImageShare
from apps.clouds.models import CloudGrant, CloudImage


def images_for(
    user: Any,
    *,
    organization_id: int | None = None,
    project_id: int | None = None,
    search: str = "",
    state: str = "",
    approval: str = "",
) -> QuerySet[Image]:
    """The images `user` may see, with their project and copy counts (available / active / failed)."""
    rows = Image.objects.for_user(user, "images.view").select_related("project", "approved_by", "created_by")
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    if project_id is not None:
        rows = rows.filter(Q(project_id=project_id) | Q(shares__project_id=project_id)).distinct()
    if search:
        rows = rows.filter(Q(name__icontains=search) | Q(os__icontains=search) | Q(version__icontains=search))
    if state:
        rows = rows.filter(state=state)
    if approval:
        rows = rows.filter(approval=approval)
    return rows.annotate(
        copies_available=Count("copies", filter=Q(copies__state=ImageCopy.State.AVAILABLE), distinct=True),
        copies_active=Count("copies", filter=Q(copies__state__in=ImageCopy.ACTIVE_STATES), distinct=True),
        copies_failed=Count("copies", filter=Q(copies__state=ImageCopy.State.FAILED), distinct=True),
    ).order_by("name", "version", "pk")


def image_detail(user: Any, pk: int) -> Image:
    """One visible image with its copies (and their accounts) and shares prefetched; DoesNotExist (a 404) else."""
    copies = ImageCopy.objects.all_tenants().select_related("account", "operation").order_by("account__name", "region")
    shares = ImageShare.objects.all_tenants().select_related("project", "shared_by").order_by("project__name")
    return (
        Image.objects.for_user(user, "images.view")
        .select_related("project", "approved_by", "created_by")
        .prefetch_related(Prefetch("copies", queryset=copies), Prefetch("shares", queryset=shares))
        .get(pk=pk)
    )


def image_copies_for(user: Any, image: Image) -> QuerySet[ImageCopy]:
    return (
        ImageCopy.objects.for_user(user, "images.view")
        .filter(image=image)
        .select_related("account", "operation", "requested_by")
        .order_by("account__name", "region")
    )


def images_launchable_in(user: Any, project_id: int) -> QuerySet[Image]:
    """Approved, ready images owned by or shared with the project (what its members may launch)."""
    shared = ImageShare.objects.all_tenants().filter(project_id=project_id).values("image_id")
    return (
        Image.objects.for_user(user, "images.view")
        .filter(state=Image.State.READY, approval=Image.Approval.APPROVED)
        .filter(Q(project_id=project_id) | Q(pk__in=shared))
        .order_by("name", "version")
    )


def approval_queue(user: Any, organization_id: int) -> QuerySet[Image]:
    """Ready images waiting for a decision, oldest first (the security admins' list)."""
    return (
        Image.objects.for_user(user, "images.approve")
        .filter(organization_id=organization_id, state=Image.State.READY, approval=Image.Approval.PENDING)
        .select_related("project", "created_by")
        .order_by("created_at")
    )


def provider_images_for_project(project: Any, *, search: str = "") -> QuerySet[CloudImage]:
    """Synced provider images of the accounts (and regions) granted to the project, for "import a provider image"
    (the import itself checks the grant again, with the user's role)."""
    grants = list(CloudGrant.objects.all_tenants().filter(project_id=project.pk, revoked_at__isnull=True))
    if not grants:
        return CloudImage.objects.all_tenants().none()
    covered = Q()
    for grant in grants:
        covered |= Q(account_id=grant.account_id, **({"region__in": grant.regions} if grant.regions else {}))
    rows = CloudImage.objects.all_tenants().filter(covered, organization_id=project.organization_id, is_active=True,
                                                   account__is_active=True)
    if search:
        rows = rows.filter(name__icontains=search)
    return rows.select_related("account").order_by("account__name", "region", "name")
