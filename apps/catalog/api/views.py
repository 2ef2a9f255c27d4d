"""Catalog API: images and their copies, hardware profiles, blueprints and the published catalog.

Reads are scoped by the Tenant* base classes (a row you cannot see answers 404). Every write calls an
apps.catalog service, which checks the right again and records the audit event; the view refuses early (403) when
the role table and the object grants (apps.catalog.permissions) say no."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, ClassVar

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Organization
from apps.catalog.api import filters
from apps.catalog.api import serializers as s
from apps.catalog.api.uploads import install_upload_handlers
from apps.catalog.models import (
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)
from apps.catalog.permissions import can_change, editors_of, organization_members
from apps.core.access import get_access
from apps.core.api.parsers import SafeJSONParser
from apps.core.api.views import TenantReadOnlyViewSet, TenantViewSet, TenantViewSetMixin

NO_PAGING: dict[str, Any] = {"filterset_class": None, "pagination_class": None}


def _services(name: str) -> ModuleType:
    """An apps.catalog service module, looked up when a request needs it."""
    return importlib.import_module(f"apps.catalog.{name}")


def image_services() -> ModuleType:
    return _services("images")


def profile_services() -> ModuleType:
    return _services("profiles")


def blueprint_services() -> ModuleType:
    return _services("blueprints")


def catalog_services() -> ModuleType:
    return _services("catalog")


class CatalogRightsMixin(TenantViewSetMixin):
    """The right a write needs depends on the action (approving is not editing), and a change right on a row can
    also come from a django-guardian object grant (apps.catalog.permissions.can_change)."""

    action_rights: ClassVar[dict[str, str]] = {}

    def right_needed(self) -> str:
        return self.action_rights.get(self.action or "", self.write_action)

    def change_target(self, obj: Any) -> Any:
        """The row whose rights govern a change of `obj` (a copy or a share is changed through its image)."""
        return obj

    def write_allowed(self, obj: Any) -> bool:
        right = self.right_needed()
        target = self.change_target(obj)
        if right == "images.approve":
            # approval is the security role's: object grants to edit an image never include it
            return get_access(self.user).can_on(right, target)
        return can_change(self.user, target, right)

    def require_write(self, obj: Any) -> None:
        if not self.write_allowed(obj):
            raise PermissionDenied(f"You are not allowed to do this ({self.right_needed()}).")


class EditorsMixin:
    """`editors` (GET, POST {user}) and `remove-editor` (POST {user}): the users a django-guardian object grant lets
    change this one row, e.g. a designer of another project. Handing out or taking back a grant needs the role."""

    editor_services: ClassVar[tuple[str, str, str]]  # (service module, grant function, revoke function)

    def _editor_call(self, which: int, obj: Any, user: Any) -> None:
        module, grant, revoke = self.editor_services
        function = getattr(_services(module), grant if which == 0 else revoke)
        function(actor=self.user, **{obj._meta.model_name: obj, "user": user})  # type: ignore[attr-defined]

    def _member(self, obj: Any, user_id: Any) -> Any:
        member = organization_members(obj.organization_id).filter(pk=user_id).first()
        if member is None:
            raise ValidationError({"user": ["No active member of this organisation has this id."]})
        return member

    @extend_schema(methods=["GET"], request=None, responses=s.EditorSerializer(many=True),
                   description="Users allowed to change this row by a per-object grant.")
    @extend_schema(methods=["POST"], request=s.EditorCreateSerializer, responses={201: s.EditorSerializer},
                   description="Let one member of the organisation change this row (needs `images.manage` on it; "
                   "audited).")
    @action(detail=True, methods=["get", "post"], serializer_class=s.EditorSerializer, **NO_PAGING)
    def editors(self, request: Request, pk: str | None = None) -> Response:
        obj = self.get_object()  # type: ignore[attr-defined]
        if request.method == "GET":
            return Response(s.EditorSerializer(editors_of(obj), many=True).data)
        payload = s.EditorCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        user = self._member(obj, payload.validated_data["user"])
        self._editor_call(0, obj, user)
        return Response(s.EditorSerializer(user).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.EditorCreateSerializer, responses={204: None},
                   description="Take a per-object grant back (needs `images.manage` on the row; audited).")
    @action(detail=True, methods=["post"], url_path="remove-editor", serializer_class=s.EditorCreateSerializer,
            **NO_PAGING)
    def remove_editor(self, request: Request, pk: str | None = None) -> Response:
        obj = self.get_object()  # type: ignore[attr-defined]
        payload = s.EditorCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        user = next((u for u in editors_of(obj) if u.pk == payload.validated_data["user"]), None)
        if user is None:
            raise ValidationError({"user": ["This user holds no grant on this row."]})
        self._editor_call(1, obj, user)
        return Response(status=status.HTTP_204_NO_CONTENT)


def blueprint_issues_error(issues: list[Any]) -> ValidationError:
    """A 400 whose `source` field lists every problem with its line and column."""
    messages = []
    for issue in issues:
        where = []
        if issue.line is not None:
            where.append(f"line {issue.line}")
        if issue.column is not None:
            where.append(f"column {issue.column}")
        prefix = ", ".join(where)
        path = f" ({issue.path})" if issue.path else ""
        messages.append(f"{prefix}{path}: {issue.message}" if prefix or path else str(issue.message))
    return ValidationError({"source": messages or ["The blueprint is not valid."]})


def issue_data(issue: Any) -> dict[str, Any]:
    return {"line": issue.line, "column": issue.column, "path": issue.path or "", "message": issue.message}


def check_blueprint(source: str, organization: Organization) -> dict[str, Any]:
    spec, issues = blueprint_services().validate_blueprint(source, organization=organization)
    if issues or spec is None:
        raise blueprint_issues_error(list(issues))
    return spec


# --- images ---------------------------------------------------------------------------------------------------
@extend_schema_view(
    list=extend_schema(description="Images of your organisations (needs `images.view`)."),
    retrieve=extend_schema(responses=s.ImageDetailSerializer, description="An image with its copies."),
    create=extend_schema(
        request=s.ImageImportUrlSerializer, responses={201: s.ImageSerializer},
        description="Import an image from an http(s) URL (needs `images.manage` in `project`). Answers at once with "
        "state `importing`; follow `state`, `progress` and `error`.",
    ),
    partial_update=extend_schema(request=s.ImageUpdateSerializer, responses=s.ImageSerializer),
    destroy=extend_schema(
        description="Delete an image and its stored file; the copies Skyport pushed are deleted at the providers "
        "too (servers running from them keep running), unless `?keep_copies=true`. An adopted provider image is "
        "never deleted at the provider.",
        parameters=[OpenApiParameter("keep_copies", bool, description="Leave the copies at the providers.")],
    ),
)
class ImageViewSet(EditorsMixin, CatalogRightsMixin, TenantViewSet):
    """Images: upload a file, import from a URL or adopt a provider image; push copies to cloud accounts; approve
    or revoke them for launch; share them with other projects of the organisation."""

    model = Image
    view_action = "images.view"
    write_action = "images.manage"
    action_rights: ClassVar[dict[str, str]] = {"approve": "images.approve", "revoke": "images.approve"}
    filterset_class = filters.ImageFilter
    editor_services = ("images", "image_grant_manage", "image_revoke_manage")

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        drf_request = super().initialize_request(request, *args, **kwargs)
        if self.action == "upload":
            # before anything reads the body: stream the file to disk, refuse it once it is too large
            install_upload_handlers(request)
        return drf_request

    def optimize(self, qs: Any) -> Any:
        qs = qs.select_related("project", "approved_by", "created_by")
        if self.action == "retrieve":
            copies = ImageCopy.objects.for_user(self.user, self.view_action).select_related("account")
            qs = qs.prefetch_related(Prefetch("copies", queryset=copies))
        return qs

    def get_serializer_class(self) -> Any:
        if self.action == "retrieve":
            return s.ImageDetailSerializer
        if self.action == "partial_update":
            return s.ImageUpdateSerializer
        if self.action == "create":
            return s.ImageImportUrlSerializer
        return s.ImageSerializer

    def _created(self, image: Image) -> Response:
        body = s.ImageSerializer(image, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = s.ImageImportUrlSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        return self._created(image_services().image_import_url(actor=self.user, **payload.validated_data))

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = image_services().image_update(
            actor=self.user, image=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: Image) -> None:
        keep = self.request.query_params.get("keep_copies", "").lower() in ("1", "true", "yes")
        image_services().image_delete(actor=self.user, image=instance, delete_copies=not keep)

    @extend_schema(
        request={"multipart/form-data": s.ImageUploadSerializer}, responses={201: s.ImageSerializer},
        description="Upload a disk image as multipart/form-data (`file` and the fields). It is checked before "
        "anything is stored: not a disk image, larger than the limit or a different `expected_sha256` answers 400.",
    )
    @action(detail=False, methods=["post"], parser_classes=[MultiPartParser, SafeJSONParser],
            serializer_class=s.ImageUploadSerializer, **NO_PAGING)
    def upload(self, request: Request) -> Response:
        payload = s.ImageUploadSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        upload = data.pop("file")
        try:
            image = image_services().image_import_upload(
                actor=self.user, fileobj=upload, filename=upload.name or "", **data
            )
        finally:
            upload.close()
        return self._created(image)

    @extend_schema(
        request=s.ImageImportProviderSerializer, responses={201: s.ImageSerializer},
        description="Adopt an image that already exists in a cloud account your project may use.",
    )
    @action(detail=False, methods=["post"], url_path="import-provider",
            serializer_class=s.ImageImportProviderSerializer, **NO_PAGING)
    def import_provider(self, request: Request) -> Response:
        payload = s.ImageImportProviderSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        return self._created(image_services().image_import_provider(actor=self.user, **payload.validated_data))

    @extend_schema(
        request=s.ImagePushSerializer, responses={202: s.ImageCopySerializer(many=True)},
        description="Copy the image to cloud account-regions (see `push-targets`). Answers the copies at once; "
        "each converts and uploads in the background: follow `image-copies/?image=<id>`.",
    )
    @action(detail=True, methods=["post"], serializer_class=s.ImagePushSerializer, **NO_PAGING)
    def push(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        payload = s.ImagePushSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        # the service checks every target (grant, region, the image's state) and names the refused ones
        targets = [(t["account"], t["region"]) for t in payload.validated_data["targets"]]
        copies = image_services().image_push(actor=self.user, image=image, targets=targets)
        body = s.ImageCopySerializer(copies, many=True, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=s.PushTargetOutSerializer(many=True),
                   description="The cloud account-regions you may push this image to.")
    @action(detail=True, methods=["get"], url_path="push-targets", **NO_PAGING)
    def push_targets(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        targets = image_services().push_targets(self.user, image)
        body = [{"account": a.pk, "account_name": a.name, "region": r} for a, r in targets]
        return Response(s.PushTargetOutSerializer(body, many=True).data)

    @extend_schema(request=s.ApproveSerializer, responses=s.ImageSerializer,
                   description="Approve the image for launch (needs `images.approve`).")
    @action(detail=True, methods=["post"], serializer_class=s.ApproveSerializer, **NO_PAGING)
    def approve(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        payload = s.ApproveSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        image = image_services().image_approve(actor=self.user, image=image, note=payload.validated_data["note"])
        return Response(s.ImageSerializer(image, context=self.get_serializer_context()).data)

    @extend_schema(request=s.RevokeSerializer, responses=s.ImageSerializer,
                   description="Revoke the approval: the image can no longer be launched (needs `images.approve`; "
                   "`note` is required).")
    @action(detail=True, methods=["post"], serializer_class=s.RevokeSerializer, **NO_PAGING)
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        payload = s.RevokeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        image = image_services().image_revoke(actor=self.user, image=image, note=payload.validated_data["note"])
        return Response(s.ImageSerializer(image, context=self.get_serializer_context()).data)

    @extend_schema(methods=["GET"], request=None, responses=s.ImageShareSerializer(many=True),
                   description="The projects this image is shared with.")
    @extend_schema(methods=["POST"], request=s.ImageShareCreateSerializer, responses={201: s.ImageShareSerializer},
                   description="Share the image with another project of its organisation.")
    @action(detail=True, methods=["get", "post"], serializer_class=s.ImageShareSerializer, **NO_PAGING)
    def shares(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        context = self.get_serializer_context()
        if request.method == "GET":
            rows = image.shares.select_related("image", "project", "shared_by")
            return Response(s.ImageShareSerializer(rows, many=True, context=context).data)
        payload = s.ImageShareCreateSerializer(data=request.data, context=context)
        payload.is_valid(raise_exception=True)
        share = image_services().image_share(actor=self.user, image=image, project=payload.validated_data["project"])
        return Response(s.ImageShareSerializer(share, context=context).data, status=status.HTTP_201_CREATED)


class ImageCopyViewSet(CatalogRightsMixin, TenantReadOnlyViewSet):
    """Images in cloud accounts: one row per account-region, with `state`, `progress` (0-100) and `error`."""

    model = ImageCopy
    view_action = "images.view"
    write_action = "images.manage"
    serializer_class = s.ImageCopySerializer
    filterset_class = filters.ImageCopyFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("image", "account", "requested_by")

    def change_target(self, obj: Any) -> Any:
        return obj.image

    @extend_schema(request=None, responses={202: s.ImageCopySerializer},
                   description="Push a failed copy again (needs `images.manage` on the image).")
    @action(detail=True, methods=["post"], **NO_PAGING)
    def retry(self, request: Request, pk: str | None = None) -> Response:
        copy = image_services().image_copy_retry(actor=self.user, copy=self.get_object())
        body = s.ImageCopySerializer(copy, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class ImageShareViewSet(CatalogRightsMixin, mixins.DestroyModelMixin, TenantReadOnlyViewSet):
    """Images shared with other projects. Create shares with `POST images/{id}/shares/`; DELETE stops sharing."""

    model = ImageShare
    view_action = "images.view"
    write_action = "images.manage"
    http_method_names = ["get", "delete", "head", "options"]
    serializer_class = s.ImageShareSerializer
    filterset_class = filters.ImageShareFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("image", "project", "shared_by")

    def change_target(self, obj: Any) -> Any:
        return obj.image

    def perform_destroy(self, instance: ImageShare) -> None:
        image_services().image_unshare(actor=self.user, share=instance)


# --- hardware profiles ----------------------------------------------------------------------------------------
class MappingQuerySerializer(serializers.Serializer):
    arch = s.enum_field(s.Arch.choices, required=False, default=s.Arch.X86_64, help_text="CPU architecture.")
    project = s.ScopedPrimaryKeyRelatedField(
        s.Project, "images.view", required=False, help_text="Only the account-regions granted to this project."
    )


@extend_schema_view(
    create=extend_schema(description="Create a profile (needs `images.manage` in the organisation)."),
    partial_update=extend_schema(request=s.HardwareProfileUpdateSerializer, responses=s.HardwareProfileSerializer),
)
class HardwareProfileViewSet(CatalogRightsMixin, TenantViewSet):
    """Hardware profiles: sizes in Skyport's terms (vCPUs, RAM, disk, GPUs), mapped to the best flavor of every
    cloud account-region (`mapping`)."""

    model = HardwareProfile
    view_action = "images.view"
    write_action = "images.manage"
    filterset_class = filters.HardwareProfileFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("created_by")

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return s.HardwareProfileUpdateSerializer
        return s.HardwareProfileSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = profile_services().profile_create(actor=self.user, **serializer.validated_data)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = profile_services().profile_update(
            actor=self.user, profile=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: HardwareProfile) -> None:
        profile_services().profile_delete(actor=self.user, profile=instance)

    @extend_schema(parameters=[MappingQuerySerializer], responses=s.ProfileFitSerializer(many=True),
                   description="The best flavor of every cloud account-region for this profile, with its estimated "
                   "price, or the reason nothing fits there.")
    @action(detail=True, methods=["get"], **NO_PAGING)
    def mapping(self, request: Request, pk: str | None = None) -> Response:
        profile = self.get_object()
        query = MappingQuerySerializer(data=request.query_params, context=self.get_serializer_context())
        query.is_valid(raise_exception=True)
        project = query.validated_data.get("project")
        if project is not None and project.organization_id != profile.organization_id:
            raise ValidationError({"project": ["This project belongs to another organisation."]})
        fits = profile_services().profile_mapping(
            profile, organization=profile.organization, arch=query.validated_data["arch"], project=project
        )
        return Response(s.ProfileFitSerializer([s.fit_data(f) for f in fits], many=True).data)


# --- blueprints -----------------------------------------------------------------------------------------------
@extend_schema_view(
    create=extend_schema(request=s.BlueprintCreateSerializer, responses={201: s.BlueprintSerializer},
                         description="Create a blueprint with its first version (needs `images.manage` in "
                         "`project`). An invalid `source` answers 400 listing every problem with its line."),
    partial_update=extend_schema(request=s.BlueprintUpdateSerializer, responses=s.BlueprintSerializer),
)
class BlueprintViewSet(EditorsMixin, CatalogRightsMixin, TenantViewSet):
    """Blueprints: named, versioned YAML descriptions of one or more servers. Versions never change; saving
    creates the next one."""

    model = Blueprint
    view_action = "images.view"
    write_action = "images.manage"
    http_method_names = ["get", "post", "patch", "head", "options"]
    filterset_class = filters.BlueprintFilter
    editor_services = ("blueprints", "blueprint_grant_manage", "blueprint_revoke_manage")

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("project", "created_by")

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return s.BlueprintCreateSerializer
        if self.action == "partial_update":
            return s.BlueprintUpdateSerializer
        return s.BlueprintSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = s.BlueprintCreateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        check_blueprint(data["source"], data["project"].organization)
        blueprint = blueprint_services().blueprint_create(actor=self.user, **data)
        body = s.BlueprintSerializer(blueprint, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = blueprint_services().blueprint_update(
            actor=self.user, blueprint=serializer.instance, **serializer.validated_data
        )

    @extend_schema(methods=["GET"], request=None, responses=s.BlueprintVersionSerializer(many=True),
                   description="Every version of the blueprint, newest first.")
    @extend_schema(methods=["POST"], request=s.BlueprintVersionCreateSerializer,
                   responses={201: s.BlueprintVersionSerializer},
                   description="Save a new version. An invalid `source` answers 400 listing every problem with its "
                   "line.")
    @action(detail=True, methods=["get", "post"], serializer_class=s.BlueprintVersionSerializer, **NO_PAGING)
    def versions(self, request: Request, pk: str | None = None) -> Response:
        blueprint = self.get_object()
        context = self.get_serializer_context()
        if request.method == "GET":
            rows = blueprint.versions.select_related("blueprint", "created_by").order_by("-number")
            return Response(s.BlueprintVersionSerializer(rows, many=True, context=context).data)
        payload = s.BlueprintVersionCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        check_blueprint(data["source"], blueprint.organization)
        version = blueprint_services().blueprint_version_save(
            actor=self.user, blueprint=blueprint, source=data["source"], note=data["note"]
        )
        return Response(s.BlueprintVersionSerializer(version, context=context).data, status=status.HTTP_201_CREATED)

    def _organization(self, project: Any) -> Organization:
        if project is not None:
            return project.organization
        orgs = list(Organization.objects.for_user(self.user, "images.view")[:2])
        if not orgs:
            raise PermissionDenied("You are not allowed to do this (images.view).")
        if len(orgs) > 1:
            raise ValidationError({"project": ["You belong to several organisations: name a project."]})
        return orgs[0]

    @extend_schema(request=s.BlueprintValidateSerializer, responses=s.BlueprintValidationSerializer,
                   description="Check a blueprint without saving it. Always 200 for a well-formed request: `valid` "
                   "and the `issues`, each with its line, column and path.")
    @action(detail=False, methods=["post"], serializer_class=s.BlueprintValidateSerializer, **NO_PAGING)
    def validate(self, request: Request) -> Response:
        payload = s.BlueprintValidateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        organization = self._organization(payload.validated_data.get("project"))
        spec, issues = blueprint_services().validate_blueprint(payload.validated_data["source"],
                                                            organization=organization)
        body = {"valid": spec is not None and not issues, "issues": [issue_data(i) for i in issues]}
        return Response(s.BlueprintValidationSerializer(body).data)

    @extend_schema(request=s.BlueprintPreviewRequestSerializer, responses=s.BlueprintPreviewSerializer,
                   description="What a saved `version` or an unsaved `source` would launch in `project`: each "
                   "server's image, profile, cloud and flavor, its estimated price and any problem.")
    @action(detail=False, methods=["post"], serializer_class=s.BlueprintPreviewRequestSerializer, **NO_PAGING)
    def preview(self, request: Request) -> Response:
        payload = s.BlueprintPreviewRequestSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        project = data["project"]
        version = data.get("version")
        spec = version.spec if version is not None else check_blueprint(data["source"], project.organization)
        preview = blueprint_services().blueprint_preview(
            spec, organization=project.organization, project=project, parameters=data.get("parameters") or {}
        )
        return Response(s.BlueprintPreviewSerializer(s.preview_data(preview)).data)


class BlueprintVersionViewSet(TenantReadOnlyViewSet):
    """Saved blueprint versions (read-only: a version never changes)."""

    model = BlueprintVersion
    view_action = "images.view"
    write_action = "images.manage"
    serializer_class = s.BlueprintVersionSerializer
    filterset_class = filters.BlueprintVersionFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("blueprint", "created_by")


# --- the catalog ----------------------------------------------------------------------------------------------
@extend_schema_view(
    list=extend_schema(description="The catalog: items published to your projects (`?project=` narrows to one, "
                       "`?search=` searches); designers also see their organisation's unpublished items."),
    create=extend_schema(request=s.CatalogItemCreateSerializer, responses={201: s.CatalogItemSerializer},
                         description="Create an item (needs `catalog.publish` in `project`)."),
    partial_update=extend_schema(request=s.CatalogItemUpdateSerializer, responses=s.CatalogItemSerializer),
)
class CatalogItemViewSet(CatalogRightsMixin, TenantViewSet):
    """Catalog items: an image with a hardware profile, or a blueprint version, published to projects. Consumers
    see the enabled items published to their projects; changes need `catalog.publish`."""

    model = CatalogItem
    view_action = "catalog.view"
    write_action = "catalog.publish"
    filterset_class = filters.CatalogItemFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related(
            "project", "image", "profile", "blueprint_version__blueprint", "created_by"
        ).prefetch_related("publications")

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return s.CatalogItemCreateSerializer
        if self.action == "partial_update":
            return s.CatalogItemUpdateSerializer
        return s.CatalogItemSerializer

    def _item(self, item: CatalogItem, code: int = status.HTTP_200_OK) -> Response:
        return Response(s.CatalogItemSerializer(item, context=self.get_serializer_context()).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = s.CatalogItemCreateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        data["publish_to"] = list(data.get("publish_to", ()))
        item = catalog_services().catalog_item_create(actor=self.user, **data)
        return self._item(item, status.HTTP_201_CREATED)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = catalog_services().catalog_item_update(
            actor=self.user, item=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: CatalogItem) -> None:
        catalog_services().catalog_item_delete(actor=self.user, item=instance)

    @extend_schema(request=s.PublishSerializer, responses=s.CatalogItemSerializer,
                   description="Publish the item to projects of its organisation.")
    @action(detail=True, methods=["post"], serializer_class=s.PublishSerializer, **NO_PAGING)
    def publish(self, request: Request, pk: str | None = None) -> Response:
        item = self.get_object()
        payload = s.PublishSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        item = catalog_services().catalog_item_publish(
            actor=self.user, item=item, projects=list(payload.validated_data["projects"])
        )
        return self._item(item)

    @extend_schema(request=s.UnpublishSerializer, responses=s.CatalogItemSerializer,
                   description="Withdraw the item from one project.")
    @action(detail=True, methods=["post"], serializer_class=s.UnpublishSerializer, **NO_PAGING)
    def unpublish(self, request: Request, pk: str | None = None) -> Response:
        item = self.get_object()
        payload = s.UnpublishSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        catalog_services().catalog_item_unpublish(actor=self.user, item=item, project=payload.validated_data["project"])
        return self._item(self.get_object())

    def _set_enabled(self, enabled: bool) -> Response:
        catalog_services().catalog_item_set_enabled(actor=self.user, item=self.get_object(), enabled=enabled)
        return self._item(self.get_object())

    @extend_schema(request=None, responses=s.CatalogItemSerializer,
                   description="Offer the item again in the projects it is published to.")
    @action(detail=True, methods=["post"], **NO_PAGING)
    def enable(self, request: Request, pk: str | None = None) -> Response:
        return self._set_enabled(True)

    @extend_schema(request=None, responses=s.CatalogItemSerializer,
                   description="Hide the item from consumers without unpublishing it (running deployments stay).")
    @action(detail=True, methods=["post"], **NO_PAGING)
    def disable(self, request: Request, pk: str | None = None) -> Response:
        return self._set_enabled(False)


__all__ = [
    "BlueprintVersionViewSet",
    "BlueprintViewSet",
    "CatalogItemViewSet",
    "HardwareProfileViewSet",
    "ImageCopyViewSet",
    "ImageShareViewSet",
    "ImageViewSet",
]
