"""Catalog pages: images (import, copies, push, shares, approval), hardware profiles with their mapping per cloud,
blueprints (editor with live validation, versions), catalog management and the consumers' catalog.

Views validate shapes with forms and call the catalog services for every write; a ServiceError becomes form
errors with the input kept, a PermissionDenied the 403 page. Rows named in a URL are looked up through scoped
querysets (404 outside the user's reach).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Case, Count, IntegerField, Prefetch, Value, When
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.models import Organization, Project
from apps.catalog import blueprints as blueprint_svc
from apps.catalog import catalog as catalog_svc
from apps.catalog import images as images_svc
from apps.catalog import profiles as profile_svc
from apps.catalog.api.uploads import install_page_upload_handlers, too_large_message
from apps.catalog.forms import (
    IMPORT_FORMS,
    ApproveForm,
    BlueprintCreateForm,
    BlueprintRenameForm,
    BlueprintSourceForm,
    BlueprintValidateForm,
    CatalogItemForm,
    CatalogSearchForm,
    ImageEditForm,
    ImageProviderForm,
    ProfileForm,
    PushForm,
    RevokeForm,
    ShareForm,
)
from apps.catalog.models import (
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    CatalogPublication,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)
from apps.catalog.permissions import can_change, editors_of, organization_members
from apps.clouds.models import CloudImage
from apps.core.context_processors import get_frame
from apps.core.forms import add_service_error
from apps.core.views import PageRequest, is_partial, org_can, org_id, org_page, safe_next

TERMINAL_COPY_STATES = frozenset({ImageCopy.State.AVAILABLE, ImageCopy.State.FAILED})
IMPORT_SOURCES = (("upload", "Upload a file"), ("url", "From a URL"), ("provider", "From a provider image"))
PROVIDER_IMAGE_LIMIT = 500


def _need(request: PageRequest, action: str, view_action: str = "images.view") -> None:
    """404 for people who cannot see this part of the catalog at all, 403 for those who see it but may not act."""
    if not org_can(request, view_action) and not org_can(request, action):
        raise Http404("Nothing here.")
    if not org_can(request, action):
        raise PermissionDenied(f"You are not allowed to do this ({action}).")


def _require_change(request: PageRequest, obj: Any, action: str = "images.manage") -> None:
    if not can_change(request.user, obj, action):
        raise PermissionDenied(f"You are not allowed to change this ({action}).")


def _organization(request: PageRequest) -> Any:
    organization = get_frame(request).organization
    if organization is None:
        raise Http404("No organisation.")
    return organization


def _projects(request: PageRequest, action: str) -> list[Project]:
    """Projects of the current organisation where the user may do `action` (the current project first)."""
    rows = list(Project.objects.for_user(request.user, action)
                .filter(organization_id=org_id(request), is_archived=False).order_by("name"))
    current = get_frame(request).project
    if current is not None:
        rows.sort(key=lambda p: p.pk != current.pk)
    return rows


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# --- images -------------------------------------------------------------------------------------------------------
def _images(request: PageRequest) -> Any:
    copies = ImageCopy.objects.all_tenants().select_related("account").order_by("account__name", "region")
    return (
        Image.objects.for_user(request.user, "images.view").filter(organization_id=org_id(request))
        .select_related("project", "created_by").prefetch_related(Prefetch("copies", queryset=copies))
    )


@org_page
@require_GET
def images(request: PageRequest) -> HttpResponse:
    _need(request, "images.view")
    return render(request, "catalog/images.html", {
        "images": list(_images(request)), "can_manage": org_can(request, "images.manage"), "live": True,
    })


@org_page
@require_GET
def image_row(request: PageRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(_images(request), pk=pk)
    return render(request, "catalog/_image_row.html", {"image": image})


def _image(request: PageRequest, pk: int) -> Image:
    return get_object_or_404(
        Image.objects.for_user(request.user, "images.view").select_related("project", "created_by", "approved_by"),
        pk=pk,
    )


def _image_context(request: PageRequest, image: Image, **forms: Any) -> dict[str, Any]:
    can_manage = can_change(request.user, image)
    can_approve = request.access.can_on("images.approve", image)
    copies = list(image.copies.select_related("account", "requested_by"))
    shares = list(image.shares.select_related("project", "shared_by"))
    push_form = forms.get("push_form")
    if push_form is None and can_manage:
        push_form = PushForm(targets=images_svc.push_targets(request.user, image))
    share_form = forms.get("share_form")
    if share_form is None and can_manage:
        taken = {s.project_id for s in shares} | {image.project_id}
        share_form = ShareForm(projects=[p for p in _projects(request, "projects.view") if p.pk not in taken])
    return {
        "image": image,
        "copies": copies,
        "shares": shares,
        "can_manage": can_manage,
        "can_approve": can_approve,
        "push_form": push_form,
        "share_form": share_form,
        "approve_form": forms.get("approve_form") or ApproveForm(),
        "revoke_form": forms.get("revoke_form") or RevokeForm(),
        "existing_targets": {f"{c.account_id}:{c.region}" for c in copies},
        "live": True,
        **_editors_context(request, image, "image"),
    }


# --- per-object edit grants (images and blueprints) ---------------------------------------------------------------
EDITOR_SERVICES: dict[str, tuple[Any, Any, str]] = {
    "image": (images_svc.image_grant_manage, images_svc.image_revoke_manage, "catalog:image-detail"),
    "blueprint": (blueprint_svc.blueprint_grant_manage, blueprint_svc.blueprint_revoke_manage,
                  "catalog:blueprint-editor"),
}


def _editors_context(request: PageRequest, obj: Any, kind: str) -> dict[str, Any]:
    editors = editors_of(obj)
    can_grant = request.access.can_on("images.manage", obj)  # the role, not an object grant, hands grants out
    candidates = []
    if can_grant:
        taken = {u.pk for u in editors} | {request.user.pk}
        candidates = [u for u in organization_members(obj.organization_id).order_by("username") if u.pk not in taken]
    return {"editors": editors, "editor_candidates": candidates, "can_grant": can_grant, "editor_kind": kind}


def _editor_change(request: PageRequest, obj: Any, kind: str, *, grant: bool) -> HttpResponseBase:
    grant_fn, revoke_fn, page = EDITOR_SERVICES[kind]
    raw = request.POST.get("user", "")
    users = organization_members(obj.organization_id) if grant else editors_of(obj)
    user = next((u for u in users if str(u.pk) == raw), None) if raw.isdigit() and len(raw) < 11 else None
    if user is None:
        messages.error(request, "Choose an active member of this organisation." if grant
                       else "This user holds no grant here.")
        return redirect(page, pk=obj.pk)
    try:
        (grant_fn if grant else revoke_fn)(actor=request.user, **{kind: obj, "user": user})
    except ValidationError as e:
        messages.error(request, _error_text(e))
    else:
        name = user.display_name
        messages.success(request, f"{name} may now edit {obj}." if grant else f"{name} may no longer edit {obj}.")
    return redirect(page, pk=obj.pk)


@org_page
@require_POST
def image_editors(request: PageRequest, pk: int) -> HttpResponseBase:
    return _editor_change(request, _image(request, pk), "image", grant=True)


@org_page
@require_POST
def image_editor_remove(request: PageRequest, pk: int) -> HttpResponseBase:
    return _editor_change(request, _image(request, pk), "image", grant=False)


def _blueprint(request: PageRequest, pk: int) -> Blueprint:
    return get_object_or_404(Blueprint.objects.for_user(request.user, "images.view").select_related("project"), pk=pk)


@org_page
@require_POST
def blueprint_editors(request: PageRequest, pk: int) -> HttpResponseBase:
    return _editor_change(request, _blueprint(request, pk), "blueprint", grant=True)


@org_page
@require_POST
def blueprint_editor_remove(request: PageRequest, pk: int) -> HttpResponseBase:
    return _editor_change(request, _blueprint(request, pk), "blueprint", grant=False)


@org_page
@require_GET
def image_detail(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    return render(request, "catalog/image_detail.html", _image_context(request, image))


@csrf_exempt  # checked just below, once the upload limit is in place (the check reads the body)
def image_import(request: PageRequest) -> HttpResponseBase:
    """The import page. The file streams to disk through the size-limit handler: a body beyond the image size
    limit is dropped while it arrives instead of filling the server's temporary space."""
    limit = install_page_upload_handlers(request) if request.method == "POST" else None
    request._image_upload_limit = limit  # type: ignore[attr-defined]
    return csrf_protect(_image_import)(request)


@org_page
@require_http_methods(["GET", "POST"])
def _image_import(request: PageRequest) -> HttpResponse:
    _need(request, "images.manage")
    source = request.POST.get("source") or request.GET.get("source") or "upload"
    if source not in IMPORT_FORMS:
        raise Http404("Unknown import source.")
    projects = _projects(request, "images.manage")
    current = get_frame(request).project
    initial = {"project": current.pk if current and any(p.pk == current.pk for p in projects) else None}
    kwargs: dict[str, Any] = {"projects": projects, "initial": initial}
    cloud_images: list[CloudImage] = []
    if source == "provider":
        cloud_images = list(
            CloudImage.objects.for_user(request.user, "images.manage")
            .filter(organization_id=org_id(request), is_active=True).select_related("account")
            .order_by("name", "account__name", "region")[:PROVIDER_IMAGE_LIMIT]
        )
        kwargs["cloud_images"] = cloud_images
    data = request.POST if request.method == "POST" else None
    files = request.FILES if request.method == "POST" else None
    form = IMPORT_FORMS[source](data, files, **kwargs)
    status = 200
    limit = getattr(request, "_image_upload_limit", None)
    if request.method == "POST" and limit is not None and limit.too_large:
        form.is_valid()
        form.errors.pop("file", None)
        form.add_error("file" if "file" in form.fields else None, too_large_message(limit.limit))
        status = 400
    elif request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                image = _import(request, source, form, projects, cloud_images)
            except ValidationError as e:
                add_service_error(form, e, {"fileobj": "file", "filename": "file", "project": "project"})
            else:
                messages.success(request, f"{image} is imported." if image.state == Image.State.READY
                                 else f"{image} is being imported.")
                return redirect("catalog:image-detail", pk=image.pk)
    return render(request, "catalog/image_import.html", {
        "form": form, "source": source, "sources": IMPORT_SOURCES,
    }, status=status)


def _import(request: PageRequest, source: str, form: Any, projects: list[Project],
            cloud_images: list[CloudImage]) -> Image:
    d = form.cleaned_data
    project = next(p for p in projects if p.pk == d["project"])
    common = {"actor": request.user, "project": project, "name": d["name"], "version": d["version"], "os": d["os"],
              "os_version": d["os_version"], "description": d["description"]}
    if source == "upload":
        upload = d["file"]
        return images_svc.image_import_upload(**common, fileobj=upload, filename=upload.name, arch=d["arch"],
                                              expected_sha256=d["expected_sha256"])
    if source == "url":
        return images_svc.image_import_url(**common, url=d["url"], arch=d["arch"],
                                           expected_sha256=d["expected_sha256"])
    assert isinstance(form, ImageProviderForm)
    cloud_image = next(i for i in cloud_images if i.pk == d["cloud_image"])
    return images_svc.image_import_provider(**common, cloud_image=cloud_image)


def _image_page_with(request: PageRequest, image: Image, **forms: Any) -> HttpResponse:
    return render(request, "catalog/image_detail.html", _image_context(request, image, **forms), status=400)


@org_page
@require_POST
def image_push(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    _require_change(request, image)
    form = PushForm(request.POST, targets=images_svc.push_targets(request.user, image))
    if form.is_valid():
        try:
            copies = images_svc.image_push(actor=request.user, image=image, targets=form.chosen())
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"Pushing {image} to {len(copies)} account-region(s).")
            return redirect("catalog:image-detail", pk=image.pk)
    return _image_page_with(request, image, push_form=form)


@org_page
@require_POST
def image_approve(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    if not request.access.can_on("images.approve", image):
        raise PermissionDenied("You are not allowed to do this (images.approve).")
    form = ApproveForm(request.POST)
    if form.is_valid():
        try:
            images_svc.image_approve(actor=request.user, image=image, note=form.cleaned_data["note"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"{image} is approved for launch.")
            return redirect(safe_next(request, request.POST.get("next"), "catalog:approvals"))
    return _image_page_with(request, image, approve_form=form)


@org_page
@require_POST
def image_revoke(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    if not request.access.can_on("images.approve", image):
        raise PermissionDenied("You are not allowed to do this (images.approve).")
    form = RevokeForm(request.POST)
    if form.is_valid():
        try:
            images_svc.image_revoke(actor=request.user, image=image, note=form.cleaned_data["note"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"{image} is revoked: it can no longer be launched.")
            return redirect(safe_next(request, request.POST.get("next"), "catalog:approvals"))
    return _image_page_with(request, image, revoke_form=form)


@org_page
@require_POST
def image_share(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    _require_change(request, image)
    projects = _projects(request, "projects.view")
    form = ShareForm(request.POST, projects=projects)
    if form.is_valid():
        project = next(p for p in projects if p.pk == form.cleaned_data["project"])
        try:
            images_svc.image_share(actor=request.user, image=image, project=project)
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"{image} is shared with {project.name}.")
            return redirect("catalog:image-detail", pk=image.pk)
    return _image_page_with(request, image, share_form=form)


@org_page
@require_POST
def share_remove(request: PageRequest, pk: int) -> HttpResponseBase:
    share = get_object_or_404(ImageShare.objects.for_user(request.user, "images.view")
                              .select_related("image", "project"), pk=pk)
    _require_change(request, share.image)
    try:
        images_svc.image_unshare(actor=request.user, share=share)
    except ValidationError as e:
        messages.error(request, _error_text(e))
    else:
        messages.success(request, f"{share.image} is no longer shared with {share.project.name}.")
    return redirect("catalog:image-detail", pk=share.image_id)


IMAGE_EDIT_FIELDS = ("name", "version", "os", "os_version", "arch", "description", "min_disk_gb", "min_ram_mb")


@org_page
@require_http_methods(["GET", "POST"])
def image_edit(request: PageRequest, pk: int) -> HttpResponse:
    image = _image(request, pk)
    _require_change(request, image)
    form = ImageEditForm(request.POST if request.method == "POST" else None,
                         initial={f: getattr(image, f) for f in IMAGE_EDIT_FIELDS})
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                saved = images_svc.image_update(actor=request.user, image=image, **form.cleaned_data)
            except ValidationError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"{saved} is saved.")
                return redirect("catalog:image-detail", pk=image.pk)
    return render(request, "catalog/image_form.html", {"form": form, "image": image}, status=status)


@org_page
@require_POST
def image_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    image = _image(request, pk)
    _require_change(request, image)
    on_clouds = image.copies.filter(state=ImageCopy.State.AVAILABLE).exists()
    delete_copies = request.POST.get("delete_copies") == "1"
    try:
        removing = images_svc.image_delete(actor=request.user, image=image, delete_copies=delete_copies)
    except ValidationError as e:
        messages.error(request, f"{image} is not deleted: {_error_text(e)}")
        return redirect("catalog:image-detail", pk=image.pk)
    if removing:
        note = f" Its {len(removing)} cloud cop{'y is' if len(removing) == 1 else 'ies are'} being deleted."
    elif on_clouds:
        note = " Its copies on the clouds stay there."
    else:
        note = ""
    messages.success(request, f"{image} is deleted.{note}")
    return redirect("catalog:images")


def _copy(request: PageRequest, pk: int) -> ImageCopy:
    return get_object_or_404(
        ImageCopy.objects.for_user(request.user, "images.view").select_related("image", "account"), pk=pk
    )


@org_page
@require_GET
def copy_row(request: PageRequest, pk: int) -> HttpResponse:
    copy = _copy(request, pk)
    return render(request, "catalog/_copy_row.html", {
        "copy": copy, "image": copy.image, "can_manage": can_change(request.user, copy.image),
    })


@org_page
@require_POST
def copy_retry(request: PageRequest, pk: int) -> HttpResponseBase:
    copy = _copy(request, pk)
    _require_change(request, copy.image)
    try:
        images_svc.image_copy_retry(actor=request.user, copy=copy)
    except ValidationError as e:
        messages.error(request, _error_text(e))
    else:
        messages.success(request, f"Pushing {copy.image} to {copy.account.name} {copy.region} again.")
    return redirect("catalog:image-detail", pk=copy.image_id)


@org_page
@require_GET
def approvals(request: PageRequest) -> HttpResponse:
    _need(request, "images.approve")
    pending_first = Case(When(approval=Image.Approval.PENDING, then=Value(0)), default=Value(1),
                         output_field=IntegerField())
    rows = list(
        Image.objects.for_user(request.user, "images.approve").filter(organization_id=org_id(request))
        .select_related("project", "created_by", "approved_by")
        .order_by(pending_first, "-created_at", "pk")
    )
    return render(request, "catalog/approvals.html", {
        "images": rows, "pending": sum(1 for i in rows if i.approval == Image.Approval.PENDING),
        "approve_form": ApproveForm(), "revoke_form": RevokeForm(),
    })


# --- hardware profiles --------------------------------------------------------------------------------------------
@org_page
@require_GET
def profiles(request: PageRequest) -> HttpResponse:
    _need(request, "images.view")
    rows = list(HardwareProfile.objects.for_user(request.user, "images.view").filter(organization_id=org_id(request)))
    mappings = profile_svc.profile_mappings(rows, organization=_organization(request)) if rows else {}
    for profile in rows:
        profile.fits = mappings.get(profile.pk, [])  # type: ignore[attr-defined]
    return render(request, "catalog/profiles.html", {
        "profiles": rows, "can_manage": org_can(request, "images.manage"),
    })


def _profile_form_page(request: PageRequest, form: ProfileForm, profile: HardwareProfile | None,
                       status: int) -> HttpResponse:
    return render(request, "catalog/profile_form.html", {"form": form, "profile": profile}, status=status)


@org_page
@require_http_methods(["GET", "POST"])
def profile_create(request: PageRequest) -> HttpResponse:
    _need(request, "images.manage")
    form = ProfileForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                profile = profile_svc.profile_create(
                    actor=request.user, organization=_organization(request), **form.cleaned_data
                )
            except ValidationError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"Hardware profile {profile.name} is created.")
                return redirect("catalog:profiles")
        return _profile_form_page(request, form, None, 400)
    return _profile_form_page(request, form, None, 200)


@org_page
@require_http_methods(["GET", "POST"])
def profile_edit(request: PageRequest, pk: int) -> HttpResponse:
    profile = get_object_or_404(HardwareProfile.objects.for_user(request.user, "images.view"), pk=pk)
    if request.method == "GET" and not can_change(request.user, profile):
        raise PermissionDenied("You are not allowed to change this (images.manage).")
    initial = {f: getattr(profile, f) for f in ("name", "vcpus", "ram_mb", "disk_gb", "gpus", "description")}
    form = ProfileForm(request.POST or None, initial=initial)
    if request.method == "POST":
        _require_change(request, profile)
        if form.is_valid():
            try:
                profile_svc.profile_update(actor=request.user, profile=profile, **form.cleaned_data)
            except ValidationError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"Hardware profile {profile.name} is saved.")
                return redirect("catalog:profiles")
        return _profile_form_page(request, form, profile, 400)
    return _profile_form_page(request, form, profile, 200)


@org_page
@require_POST
def profile_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    profile = get_object_or_404(HardwareProfile.objects.for_user(request.user, "images.view"), pk=pk)
    _require_change(request, profile)
    try:
        profile_svc.profile_delete(actor=request.user, profile=profile)
    except ValidationError as e:
        messages.error(request, f"Hardware profile {profile.name} is not deleted: {_error_text(e)}")
        return redirect("catalog:profile-edit", pk=profile.pk)
    messages.success(request, f"Hardware profile {profile.name} is deleted.")
    return redirect("catalog:profiles")


# --- blueprints ---------------------------------------------------------------------------------------------------
@org_page
@require_GET
def blueprints(request: PageRequest) -> HttpResponse:
    _need(request, "images.view")
    rows = list(
        Blueprint.objects.for_user(request.user, "images.view").filter(organization_id=org_id(request))
        .select_related("project", "created_by").annotate(version_count=Count("versions"))
    )
    return render(request, "catalog/blueprints.html", {
        "blueprints": rows, "can_manage": org_can(request, "images.manage"),
    })


def _check(source: str, organization: Any, project: Any) -> dict[str, Any]:
    """Validation issues and, for a valid document, the preview: what would run where and at what price."""
    spec, issues = blueprint_svc.validate_blueprint(source, organization=organization)
    preview = None
    if spec is not None:
        preview = blueprint_svc.blueprint_preview(spec, organization=organization, project=project)
    return {"issues": issues, "preview": preview, "checked": True, "valid": spec is not None and not issues}


@org_page
@require_http_methods(["GET", "POST"])
def blueprint_create(request: PageRequest) -> HttpResponse:
    _need(request, "images.manage")
    projects = _projects(request, "images.manage")
    current = get_frame(request).project
    form = BlueprintCreateForm(request.POST or None, projects=projects,
                               initial={"project": current.pk if current else None})
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            d = form.cleaned_data
            project = next(p for p in projects if p.pk == d["project"])
            try:
                blueprint = blueprint_svc.blueprint_create(
                    actor=request.user, project=project, name=d["name"], source=d["source"],
                    description=d["description"], note=d["note"],
                )
            except ValidationError as e:
                add_service_error(form, e, {"spec": "source"})
            else:
                messages.success(request, f"Blueprint {blueprint.name} is saved as version 1.")
                return redirect("catalog:blueprint-editor", pk=blueprint.pk)
    check = _check(form.data.get("source", ""), _organization(request), None) if form.is_bound else {}
    return render(request, "catalog/blueprint_editor.html", {
        "form": form, "blueprint": None, "versions": [], "can_manage": True, **check,
    }, status=status)


@org_page
@require_http_methods(["GET", "POST"])
def blueprint_editor(request: PageRequest, pk: int) -> HttpResponse:
    blueprint = get_object_or_404(
        Blueprint.objects.for_user(request.user, "images.view").select_related("project"), pk=pk
    )
    versions = _blueprint_versions(blueprint)
    latest = versions[0] if versions else None
    form = BlueprintSourceForm(request.POST or None, initial={"source": latest.source if latest else ""})
    status = 200
    if request.method == "POST":
        _require_change(request, blueprint)
        status = 400
        if form.is_valid():
            try:
                version = blueprint_svc.blueprint_version_save(
                    actor=request.user, blueprint=blueprint, source=form.cleaned_data["source"],
                    note=form.cleaned_data["note"],
                )
            except ValidationError as e:
                add_service_error(form, e, {"spec": "source"})
            else:
                messages.success(request, f"Saved as version {version.number}.")
                return redirect("catalog:blueprint-editor", pk=blueprint.pk)
    return _blueprint_page(request, blueprint, versions, form, status)


def _blueprint_versions(blueprint: Blueprint) -> list[BlueprintVersion]:
    return list(blueprint.versions.select_related("created_by").order_by("-number"))


def _blueprint_page(request: PageRequest, blueprint: Blueprint, versions: list[BlueprintVersion],
                    form: BlueprintSourceForm, status: int,
                    rename_form: BlueprintRenameForm | None = None) -> HttpResponse:
    can_manage = can_change(request.user, blueprint)
    latest = versions[0] if versions else None
    if rename_form is None and can_manage:
        rename_form = BlueprintRenameForm(initial={"name": blueprint.name, "description": blueprint.description})
    source = form.data.get("source", "") if form.is_bound else (latest.source if latest else "")
    check = _check(source, _organization(request), blueprint.project) if source else {}
    return render(request, "catalog/blueprint_editor.html", {
        "form": form, "blueprint": blueprint, "versions": versions, "latest": latest, "can_manage": can_manage,
        "rename_form": rename_form, **check, **_editors_context(request, blueprint, "blueprint"),
    }, status=status)


@org_page
@require_POST
def blueprint_rename(request: PageRequest, pk: int) -> HttpResponse:
    blueprint = _blueprint(request, pk)
    _require_change(request, blueprint)
    form = BlueprintRenameForm(request.POST)
    if form.is_valid():
        try:
            saved = blueprint_svc.blueprint_update(actor=request.user, blueprint=blueprint,
                                                   name=form.cleaned_data["name"],
                                                   description=form.cleaned_data["description"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"Blueprint {saved.name} is saved.")
            return redirect("catalog:blueprint-editor", pk=blueprint.pk)
    versions = _blueprint_versions(blueprint)
    source_form = BlueprintSourceForm(initial={"source": versions[0].source if versions else ""})
    return _blueprint_page(request, blueprint, versions, source_form, 400, rename_form=form)


@org_page
@require_POST
def blueprint_validate(request: PageRequest) -> HttpResponse:
    _need(request, "images.manage")
    form = BlueprintValidateForm(request.POST)
    if not form.is_valid():
        return render(request, "catalog/_blueprint_check.html", {
            "issues": [], "form_errors": [m for errs in form.errors.values() for m in errs], "checked": True,
        }, status=400)
    project = None
    if form.cleaned_data.get("blueprint"):
        blueprint = get_object_or_404(
            Blueprint.objects.for_user(request.user, "images.view").select_related("project"),
            pk=form.cleaned_data["blueprint"],
        )
        project = blueprint.project
    context = _check(form.cleaned_data["source"] or "", _organization(request), project)
    return render(request, "catalog/_blueprint_check.html", context)


@org_page
@require_GET
def blueprint_version(request: PageRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(
        BlueprintVersion.objects.for_user(request.user, "images.view")
        .select_related("blueprint", "blueprint__project", "created_by"), pk=pk,
    )
    return render(request, "catalog/blueprint_version.html", {
        "version": version, "blueprint": version.blueprint, "lines": version.source.splitlines() or [""],
    })


# --- catalog management -------------------------------------------------------------------------------------------
def _managed_items(request: PageRequest) -> Any:
    publications = CatalogPublication.objects.all_tenants().select_related("project").order_by("project__name")
    return (
        CatalogItem.objects.for_user(request.user, "catalog.publish").filter(organization_id=org_id(request))
        .select_related("project", "image", "profile", "blueprint_version__blueprint")
        .prefetch_related(Prefetch("publications", queryset=publications))
    )


@org_page
@require_GET
def items(request: PageRequest) -> HttpResponse:
    _need(request, "catalog.publish")
    return render(request, "catalog/items.html", {"items": list(_managed_items(request))})


def _item_form(request: PageRequest, data: Any = None, initial: dict[str, Any] | None = None) -> CatalogItemForm:
    org = org_id(request)
    return CatalogItemForm(
        data, initial=initial,
        projects=_projects(request, "catalog.publish"),
        publish_projects=_projects(request, "projects.view"),
        images=list(Image.objects.for_user(request.user, "images.view").filter(organization_id=org)),
        profiles=list(HardwareProfile.objects.for_user(request.user, "images.view").filter(organization_id=org)),
        versions=list(BlueprintVersion.objects.for_user(request.user, "images.view").filter(organization_id=org)
                      .select_related("blueprint").order_by("blueprint__name", "-number")),
    )


def _by_pk(model: Any, request: PageRequest, pk: int | None, action: str = "images.view") -> Any:
    if pk is None:
        return None
    return model.objects.for_user(request.user, action).get(pk=pk)


ITEM_ERROR_FIELDS = {"projects": "publish_to", "item": "__all__"}


def _item_fields(request: PageRequest, form: CatalogItemForm) -> dict[str, Any]:
    """What the services take from the form; the content fields of the item's kind only."""
    d = form.cleaned_data
    fields: dict[str, Any] = {
        "name": d["name"], "summary": d["summary"], "description": d["description"], "icon": d["icon"],
        "approval_threshold_monthly": d["approval_threshold_monthly"],
    }
    if d["kind"] == CatalogItem.Kind.IMAGE:
        fields["image"] = _by_pk(Image, request, d["image"])
        fields["profile"] = _by_pk(HardwareProfile, request, d["profile"])
    else:
        fields["blueprint_version"] = _by_pk(BlueprintVersion, request, d["blueprint_version"])
    return fields


def _publish_projects(request: PageRequest, form: CatalogItemForm) -> list[Project]:
    chosen = set(form.cleaned_data["publish_to"])
    return [p for p in _projects(request, "projects.view") if p.pk in chosen]


def _item_page(request: PageRequest, form: CatalogItemForm, item: CatalogItem | None, status: int) -> HttpResponse:
    return render(request, "catalog/item_form.html", {
        "form": form, "item": item, "icons": CatalogItem.ICONS,
    }, status=status)


@org_page
@require_http_methods(["GET", "POST"])
def item_create(request: PageRequest) -> HttpResponse:
    _need(request, "catalog.publish")
    current = get_frame(request).project
    form = _item_form(request, request.POST or None, initial={"project": current.pk if current else None})
    if request.method == "GET":
        return _item_page(request, form, None, 200)
    if form.is_valid():
        project = next(p for p in _projects(request, "catalog.publish") if p.pk == form.cleaned_data["project"])
        try:
            item = catalog_svc.catalog_item_create(
                actor=request.user, project=project, kind=form.cleaned_data["kind"],
                publish_to=_publish_projects(request, form), **_item_fields(request, form),
            )
        except ValidationError as e:
            add_service_error(form, e, ITEM_ERROR_FIELDS)
        else:
            messages.success(request, f"{item.name} is in the catalog.")
            return redirect("catalog:items")
    return _item_page(request, form, None, 400)


def _managed_item(request: PageRequest, pk: int) -> CatalogItem:
    item = get_object_or_404(_managed_items(request), pk=pk)
    _require_change(request, item, "catalog.publish")
    return item


@org_page
@require_http_methods(["GET", "POST"])
def item_edit(request: PageRequest, pk: int) -> HttpResponse:
    item = _managed_item(request, pk)
    published = {p.project_id for p in item.publications.all()}
    initial = {
        "project": item.project_id, "name": item.name, "kind": item.kind, "image": item.image_id,
        "profile": item.profile_id, "blueprint_version": item.blueprint_version_id, "summary": item.summary,
        "description": item.description, "icon": item.icon,
        "approval_threshold_monthly": item.approval_threshold_monthly, "publish_to": sorted(published),
    }
    form = _item_form(request, request.POST or None, initial=initial)
    # what an item launches (an image or a blueprint) and who manages it are fixed once it exists
    form.fields["kind"].disabled = True
    form.fields["project"].disabled = True
    if request.method == "GET":
        return _item_page(request, form, item, 200)
    if form.is_valid():
        wanted = _publish_projects(request, form)
        try:
            with transaction.atomic():
                catalog_svc.catalog_item_update(actor=request.user, item=item, **_item_fields(request, form))
                added = [p for p in wanted if p.pk not in published]
                if added:
                    catalog_svc.catalog_item_publish(actor=request.user, item=item, projects=added)
                keep = {p.pk for p in wanted}
                for publication in item.publications.all():
                    if publication.project_id not in keep:
                        catalog_svc.catalog_item_unpublish(actor=request.user, item=item,
                                                           project=publication.project)
        except ValidationError as e:
            add_service_error(form, e, ITEM_ERROR_FIELDS)
        else:
            messages.success(request, f"{item.name} is saved.")
            return redirect("catalog:items")
    return _item_page(request, form, item, 400)


@org_page
@require_POST
def item_enable(request: PageRequest, pk: int) -> HttpResponseBase:
    item = _managed_item(request, pk)
    enabled = request.POST.get("enabled") == "1"
    try:
        catalog_svc.catalog_item_set_enabled(actor=request.user, item=item, enabled=enabled)
    except ValidationError as e:
        messages.error(request, _error_text(e))
    else:
        messages.success(request, f"{item.name} is {'enabled' if enabled else 'disabled'}.")
    return redirect("catalog:items")


@org_page
@require_POST
def item_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    item = _managed_item(request, pk)
    try:
        catalog_svc.catalog_item_delete(actor=request.user, item=item)
    except ValidationError as e:
        messages.error(request, f"{item.name} is not deleted: {_error_text(e)}")
        return redirect("catalog:item-edit", pk=item.pk)
    messages.success(request, f"{item.name} is deleted from the catalog.")
    return redirect("catalog:items")


# --- the consumers' catalog ---------------------------------------------------------------------------------------
@org_page
@require_GET
def browse(request: PageRequest) -> HttpResponse:
    _need(request, "catalog.view", "catalog.view")
    form = CatalogSearchForm(request.GET or None)
    search = form.cleaned_data.get("q", "") if form.is_valid() else ""
    project = get_frame(request).project
    rows = list(
        catalog_svc.catalog_for(request.user, project=project, search=search)
        .filter(organization_id=org_id(request), is_enabled=True)
    )
    context = {"items": rows, "form": form, "search": search, "project": project}
    template = "catalog/_cards.html" if is_partial(request) else "catalog/browse.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@org_page
@require_GET
def item_detail(request: PageRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(
        CatalogItem.objects.for_user(request.user, "catalog.view")
        .select_related("image", "profile", "blueprint_version__blueprint"), pk=pk,
    )
    # the item's own organisation; the clouds shown are those of a project of it (never another organisation's)
    organization = Organization.objects.all_tenants().get(pk=item.organization_id)
    project = get_frame(request).project
    if project is not None and project.organization_id != item.organization_id:
        project = None
    sees_clouds = request.access.can("images.view", organization_id=item.organization_id)
    if project is None and not sees_clouds:
        # a consumer sees the clouds of a project of theirs the item is published to, not every account
        publication = (CatalogPublication.objects.for_user(request.user, "catalog.view").filter(item_id=item.pk)
                       .select_related("project").order_by("project__name").first())
        project = publication.project if publication is not None else None
    fits: list[Any] = []
    preview = None
    if project is None and not sees_clouds:
        pass
    elif item.kind == CatalogItem.Kind.IMAGE and item.profile is not None:
        fits = profile_svc.profile_mapping(item.profile, organization=organization, project=project,
                                           image=item.image)
    elif item.blueprint_version is not None:
        preview = blueprint_svc.blueprint_preview(item.blueprint_version.spec, organization=organization,
                                                  project=project)
    return render(request, "catalog/item_detail.html", {
        "item": item, "fits": fits, "preview": preview, "project": project,
        "can_manage": org_can(request, "catalog.publish") and can_change(request.user, item, "catalog.publish"),
    })
