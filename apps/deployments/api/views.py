"""Deployments API: deployments and their instances with their lifecycle actions, quotas, hooks and their deliveries,
approvals, and the provider operations of the servers.

Reads are scoped by the Tenant* base classes (a row you cannot see answers 404, exactly like a missing one). Every
write calls a service, which checks the right again and records the audit event; the views refuse early (403) when
the role table says no. Lifecycle actions answer 202 with the deployment (or instance) as it is now: the provider
work runs in the background (follow `state`, the live events, or `operations/?deployment=<id>`)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Membership, User
from apps.clouds.models import Operation
from apps.core.access import get_access
from apps.core.api.pagination import CreatedCursorPagination
from apps.core.api.views import TenantReadOnlyViewSet, TenantViewSet
from apps.deployments import quota_services, services
from apps.deployments.api import filters
from apps.deployments.api import serializers as s
from apps.deployments.models import Approval, Deployment, Hook, HookDelivery, Instance, Quota
from apps.deployments.states import LIVE

NO_PAGING: dict[str, Any] = {"filterset_class": None, "pagination_class": None}
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Any text up to 100 characters. A request repeated with the same key answers 200 with the deployment "
    "the first one made, and launches nothing new.",
)


def _module(name: str) -> ModuleType:
    """A deployments module looked up when a request needs it (hooks and the reconciler pull in their own stacks)."""
    return importlib.import_module(f"apps.deployments.{name}")


def _body(serializer_class: type[Any], request: Request, context: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = serializer_class(data=request.data, context=context or {})
    payload.is_valid(raise_exception=True)
    return dict(payload.validated_data)


def _error(exc: Exception) -> dict[str, Any]:
    """A bulk result's error, in the shape of the API's error body."""
    if isinstance(exc, Http404):
        return {"code": "not_found", "message": "Not found."}
    if isinstance(exc, DjangoPermissionDenied):
        return {"code": "permission_denied", "message": str(exc) or "You are not allowed to do this."}
    assert isinstance(exc, DjangoValidationError)
    if hasattr(exc, "error_dict"):
        fields = {k: [m for e in v for m in e.messages] for k, v in exc.error_dict.items()}
        return {"code": "invalid", "message": "The request has invalid fields.", "fields": fields}
    return {"code": "invalid", "message": " ".join(exc.messages)}


def _live_instance_count() -> Any:
    """Live servers of each deployment on the page, counted per row. A join with GROUP BY would aggregate every
    instance of every visible deployment before the page is cut (seconds at 100k instances); a correlated count
    runs for the rows of the page only, and leaves the newest-first index usable."""
    live = (
        Instance.objects.all_tenants().filter(deployment_id=OuterRef("pk"), state__in=sorted(LIVE))
        .order_by().values("deployment_id").annotate(n=Count("pk")).values("n")
    )
    return Coalesce(Subquery(live, output_field=IntegerField()), 0)


# --- deployments -----------------------------------------------------------------------------------------------
ACTION_DOC = "Answers 202 with the deployment; the servers change in the background. A server the action does not " \
             "apply to (a stop of a stopped one) is left alone; 400 when it applies to none."


@extend_schema_view(
    list=extend_schema(description="Deployments of your projects (org roles: of the organisation), newest first."),
    retrieve=extend_schema(description="A deployment with its servers, placement and approval. `sequence` is the "
                           "number of its last live event."),
    create=extend_schema(
        request=s.DeploymentCreateSerializer, parameters=[IDEMPOTENCY_KEY],
        responses={201: s.DeploymentDetailSerializer, 200: OpenApiResponse(
            s.DeploymentDetailSerializer, description="A retry with the same Idempotency-Key: the first deployment.")},
        description="Launch a catalog item in a project (needs `deployments.launch`). Everything is checked before "
        "anything is reserved or asked of a provider: a 400 names the field (an unknown item, a parameter of the "
        "wrong type, a size over the quota, a cloud not granted to the project). The answer shows the placement: "
        "the chosen clouds with the reason, every rejected cloud with why. Over the item's price threshold the "
        "launch waits for an approval (`state: pending_approval`).",
    ),
    destroy=extend_schema(
        responses={202: s.DeploymentDetailSerializer},
        description="Delete every server and what Skyport created for them (addresses); the quota is given back "
        "when the last one is gone. Before launch it cancels the request. Answers 202 with the deployment.",
    ),
)
class DeploymentViewSet(TenantViewSet):
    """Deployments: launches of catalog items, their servers, and the actions on them (needs
    `deployments.operate` in the project)."""

    model = Deployment
    view_action = "deployments.view"
    write_action = "deployments.operate"
    http_method_names = ["get", "post", "delete", "head", "options"]
    filterset_class = filters.DeploymentFilter

    def optimize(self, qs: Any) -> Any:
        qs = qs.select_related(
            "project", "owner", "catalog_item", "created_by", "approval", "approval__requested_by",
            "approval__decided_by",
        ).annotate(instance_count=_live_instance_count()).order_by("-created_at", "-pk")
        if self.action != "list":
            instances = Instance.objects.for_user(self.user, self.view_action).select_related("account")
            qs = qs.prefetch_related(Prefetch("instances", queryset=instances))
        return qs

    def get_serializer_class(self) -> Any:
        if self.action == "list":
            return s.DeploymentSerializer
        if self.action == "create":
            return s.DeploymentCreateSerializer
        return s.DeploymentDetailSerializer

    def _answer(self, deployment: Deployment, code: int = status.HTTP_202_ACCEPTED) -> Response:
        fresh = self.get_queryset().get(pk=deployment.pk)
        return Response(s.DeploymentDetailSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = _body(s.DeploymentCreateSerializer, request, self.get_serializer_context())
        deployment, created = services.deployment_request(
            actor=self.user, project=data["project"], name=data["name"], item=data["item"], size=data["size"],
            policy=data["policy"], account=data["account"], parameters=data["parameters"], ssh_key=data["ssh_key"],
            lease_days=data["lease_days"], idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
        if created and hasattr(deployment, "instance_count"):
            # a new launch carries what a read would find (its servers, no approval): no need to read it back
            answer = s.DeploymentDetailSerializer(deployment, context=self.get_serializer_context()).data
            return Response(answer, status=status.HTTP_201_CREATED)
        return self._answer(deployment, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._delete(self.get_object())

    def _delete(self, deployment: Deployment) -> Response:
        services.deployment_delete(actor=self.user, deployment=deployment)
        return self._answer(deployment)

    def _lifecycle(self, name: str, body: type[Any] = s.EmptySerializer) -> Response:
        deployment = self.get_object()  # first: an invisible deployment answers 404 whatever the body
        size = _body(body, self.request).get("size")
        services.deployment_action(actor=self.user, deployment=deployment, action=name, size=size)
        return self._answer(deployment)

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description=f"Start the stopped servers. {ACTION_DOC}")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("start")

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description=f"Stop the running servers. {ACTION_DOC}")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def stop(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("stop")

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description=f"Reboot the running servers. {ACTION_DOC}")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def reboot(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("reboot")

    @extend_schema(request=s.SizeSerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Resize the running and stopped servers to another hardware profile (the quota is "
                   f"checked for the growth). {ACTION_DOC}")
    @action(detail=True, methods=["post"], serializer_class=s.SizeSerializer, **NO_PAGING)
    def resize(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("resize", s.SizeSerializer)

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description="The same as DELETE on the deployment.")
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete", serializer_class=s.EmptySerializer,
            **NO_PAGING)
    def delete_action(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        _body(s.EmptySerializer, request)
        return self._delete(deployment)

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Ask the providers now how every server is (one look-up each) and apply what they "
                   "say; the next sweep of those clouds is brought forward. 400 names the servers that could not be "
                   "looked up (the others are updated).")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def resync(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        _body(s.EmptySerializer, request)
        _module("reconciler").deployment_resync(actor=self.user, deployment=deployment)
        return self._answer(deployment)

    @extend_schema(request=s.ExtendSerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Set the lease to end `lease_days` from now (within the catalog item's limit).")
    @action(detail=True, methods=["post"], serializer_class=s.ExtendSerializer, **NO_PAGING)
    def extend(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        data = _body(s.ExtendSerializer, request)
        services.deployment_extend(actor=self.user, deployment=deployment, days=data["lease_days"])
        return self._answer(deployment)

    @extend_schema(request=s.TransferSerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Hand the deployment to another member of its project who may launch there: its "
                   "usage is charged to them from now on.")
    @action(detail=True, methods=["post"], serializer_class=s.TransferSerializer, **NO_PAGING)
    def transfer(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        data = _body(s.TransferSerializer, request)
        members = User.objects.filter(pk__in=Membership.objects.all_tenants().filter(
            organization_id=deployment.organization_id).values("user_id"))
        value = data["owner"]
        owner = (members.filter(pk=value) if isinstance(value, int) else members.filter(
            username__iexact=value)).first()
        if owner is None:
            raise ValidationError({"owner": [f"Nobody called '{value}' belongs to this organisation."]})
        services.deployment_transfer(actor=self.user, deployment=deployment, new_owner=owner)
        return self._answer(deployment)

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Create the failed servers of a partly failed deployment again.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def retry(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        _body(s.EmptySerializer, request)
        services.deployment_retry_failed(actor=self.user, deployment=deployment)
        return self._answer(deployment)

    @extend_schema(request=s.EmptySerializer, responses={202: s.DeploymentDetailSerializer},
                   description="Withdraw a request (before launch), or stop a launch in progress or partly failed "
                   "and remove what it created. An active deployment is deleted instead (400).")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        deployment = self.get_object()
        _body(s.EmptySerializer, request)
        services.deployment_cancel(actor=self.user, deployment=deployment)
        return self._answer(deployment)

    @extend_schema(request=s.BulkSerializer, responses={200: s.BulkResponseSerializer},
                   description="One action on many deployments. Each id gets its own result: `ok`, or the error it "
                   "would have had alone (an id you cannot see answers `not_found`, exactly like a missing one). "
                   "One failing never stops the others.")
    @action(detail=False, methods=["post"], serializer_class=s.BulkSerializer, **NO_PAGING)
    def bulk(self, request: Request) -> Response:
        data = _body(s.BulkSerializer, request)
        name, size = data["action"], data["size"] or None
        visible = {d.pk: d for d in Deployment.objects.for_user(self.user, self.view_action).select_related(
            "project", "owner", "catalog_item").filter(pk__in=data["ids"])}
        results: list[dict[str, Any]] = []
        for pk in data["ids"]:
            deployment = visible.get(pk)
            try:
                if deployment is None:
                    raise Http404
                self._bulk_one(deployment, name, size)
                results.append({"id": pk, "ok": True})
            except (Http404, DjangoPermissionDenied, DjangoValidationError) as exc:
                results.append({"id": pk, "ok": False, "error": _error(exc)})
        states = dict(Deployment.objects.for_user(self.user, self.view_action).filter(
            pk__in=[r["id"] for r in results if r["ok"]]).values_list("pk", "state"))
        for result in results:
            if result["ok"]:
                result["state"] = states.get(result["id"], "")
        return Response(s.BulkResponseSerializer({"action": name, "results": results}).data)

    def _bulk_one(self, deployment: Deployment, name: str, size: str | None) -> None:
        if not get_access(self.user).can_on(self.write_action, deployment):
            raise DjangoPermissionDenied(f"You are not allowed to do this ({self.write_action}).")
        if name == "delete":
            services.deployment_delete(actor=self.user, deployment=deployment)
        elif name == "cancel":
            services.deployment_cancel(actor=self.user, deployment=deployment)
        elif name == "retry":
            services.deployment_retry_failed(actor=self.user, deployment=deployment)
        else:
            services.deployment_action(actor=self.user, deployment=deployment, action=name, size=size)


# --- instances -------------------------------------------------------------------------------------------------
class InstanceViewSet(TenantReadOnlyViewSet):
    """Servers of the deployments you can see, and the actions on one of them (needs `deployments.operate`)."""

    model = Instance
    view_action = "deployments.view"
    write_action = "deployments.operate"
    serializer_class = s.InstanceSerializer
    filterset_class = filters.InstanceFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("deployment", "account", "owner")

    def _answer(self, instance: Instance) -> Response:
        fresh = self.get_queryset().get(pk=instance.pk)
        body = s.InstanceSerializer(fresh, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    def _lifecycle(self, name: str, body: type[Any] = s.EmptySerializer) -> Response:
        instance = self.get_object()  # first: an invisible instance answers 404 whatever the body
        size = _body(body, self.request).get("size")
        services.instance_action(actor=self.user, instance=instance, action=name, size=size)
        return self._answer(instance)

    @extend_schema(request=s.EmptySerializer, responses={202: s.InstanceSerializer},
                   description="Start a stopped server. Answers 202; it moves through `starting` to `running`.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def start(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("start")

    @extend_schema(request=s.EmptySerializer, responses={202: s.InstanceSerializer},
                   description="Stop a running server. Answers 202; it moves through `stopping` to `stopped`.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def stop(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("stop")

    @extend_schema(request=s.EmptySerializer, responses={202: s.InstanceSerializer},
                   description="Reboot a running server (soft). Answers 202.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def reboot(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("reboot")

    @extend_schema(request=s.SizeSerializer, responses={202: s.InstanceSerializer},
                   description="Resize a running or stopped server to another hardware profile, in the same cloud "
                   "and region (the quota is checked for the growth). Answers 202.")
    @action(detail=True, methods=["post"], serializer_class=s.SizeSerializer, **NO_PAGING)
    def resize(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle("resize", s.SizeSerializer)

    @extend_schema(request=s.EmptySerializer, responses={202: s.InstanceSerializer},
                   description="Delete this one server and its address. Answers 202.")
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete", serializer_class=s.EmptySerializer,
            **NO_PAGING)
    def delete_action(self, request: Request, pk: str | None = None) -> Response:
        instance = self.get_object()
        _body(s.EmptySerializer, request)
        services.instance_delete(actor=self.user, instance=instance)
        return self._answer(instance)

    @extend_schema(request=s.EmptySerializer, responses={202: s.InstanceSerializer},
                   description="Ask the provider now how this server is and apply it (`last_synced_at` moves).")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def resync(self, request: Request, pk: str | None = None) -> Response:
        instance = self.get_object()
        _body(s.EmptySerializer, request)
        _module("reconciler").instance_resync(actor=self.user, instance=instance)
        return self._answer(instance)

    @extend_schema(request=s.EmptySerializer, responses={200: s.ConsoleSerializer},
                   description="The console of a running server: `{\"kind\": \"url\", \"url\"}` (open it in a "
                   "browser: OpenStack noVNC) or `{\"kind\": \"log\", \"output\"}` (the console output: EC2, the "
                   "simulator). A POST because a console URL lets its holder type into the server.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def console(self, request: Request, pk: str | None = None) -> Response:
        instance = self.get_object()
        _body(s.EmptySerializer, request)
        console = services.instance_console(actor=self.user, instance=instance)
        return Response(s.ConsoleSerializer(s.console_data(console)).data)


# --- quotas ----------------------------------------------------------------------------------------------------
@extend_schema_view(
    list=extend_schema(description="The quotas that apply to you (org admins: every quota of the organisation), each "
                       "with what is `used` of it now."),
    create=extend_schema(
        responses={201: s.QuotaSerializer, 200: OpenApiResponse(s.QuotaSerializer, description="The scope already "
                   "had a quota: the limits given were changed.")},
        description="Set the quota of the organisation, of one `project`, or of one `user` in the organisation "
        "(needs `quotas.manage`). Limits left out keep their value; null removes a limit.",
    ),
    partial_update=extend_schema(request=s.QuotaUpdateSerializer, responses=s.QuotaSerializer,
                                 description="Change limits (null: no limit). The scope never changes."),
    destroy=extend_schema(description="Remove the quota: its scope has no limit from now on."),
)
class QuotaViewSet(TenantViewSet):
    """Quotas (instances, vCPUs, RAM, disk) of an organisation, a project or a user. Everybody sees the quotas that
    apply to them; org admins (`quotas.manage`) see and set them all."""

    model = Quota
    view_action = "deployments.view"
    write_action = "quotas.manage"
    filterset_class = filters.QuotaFilter

    def get_queryset(self) -> Any:
        managed = get_access(self.user).orgs_allowing(self.write_action)
        # another member's own quota is theirs to know, not the whole project's
        return super().get_queryset().filter(
            Q(organization_id__in=managed) | Q(user__isnull=True) | Q(user_id=self.user.pk)
        )

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("project", "user", "updated_by")

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return s.QuotaUpdateSerializer
        return s.QuotaSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        rows = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(rows)
        quotas = list(page if page is not None else rows)
        context = {**self.get_serializer_context(), "quota_used": quota_services.quotas_used(quotas)}
        data = s.QuotaSerializer(quotas, many=True, context=context).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    def _answer(self, quota: Quota, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=quota.pk)
        return Response(s.QuotaSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = _body(s.QuotaSerializer, request, self.get_serializer_context())
        scope = {"organization": data.pop("organization"), "project": data.pop("project", None),
                 "user": data.pop("user", None)}
        existed = quota_services.quota_of(**scope) is not None
        quota = quota_services.quota_set(actor=self.user, **scope, **data)
        return self._answer(quota, status.HTTP_200_OK if existed else status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        quota = self.get_object()
        data = _body(s.QuotaUpdateSerializer, request, self.get_serializer_context())
        quota = quota_services.quota_set(actor=self.user, organization=quota.organization, project=quota.project,
                                         user=quota.user, **data)
        return self._answer(quota)

    def perform_destroy(self, instance: Quota) -> None:
        quota_services.quota_delete(actor=self.user, quota=instance)


# --- hooks -----------------------------------------------------------------------------------------------------
@extend_schema_view(
    create=extend_schema(description="Register a hook (needs `hooks.manage`). The URL is checked against the "
                         "outbound rules (no private or metadata addresses) before anything is saved."),
    partial_update=extend_schema(request=s.HookUpdateSerializer, responses=s.HookSerializer,
                                 description="Change a hook; a new `secret` rotates it."),
    destroy=extend_schema(description="Remove a hook and its delivery log."),
)
class HookViewSet(TenantViewSet):
    """Before- and after-launch hooks of your organisations (needs `hooks.manage`). The secret is write-only."""

    model = Hook
    view_action = "hooks.manage"
    write_action = "hooks.manage"
    filterset_class = filters.HookFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("created_by")

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return s.HookUpdateSerializer
        return s.HookSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = _module("hooks").hook_create(actor=self.user, **serializer.validated_data)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = _module("hooks").hook_update(
            actor=self.user, hook=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: Hook) -> None:
        _module("hooks").hook_delete(actor=self.user, hook=instance)

    @extend_schema(request=s.EmptySerializer, responses={200: s.HookDeliverySerializer},
                   description="Send a signed `test` event now (a disabled hook too) and answer the delivery: its "
                   "state, status code and how long it took. A before-launch hook's answer is read as a verdict.")
    @action(detail=True, methods=["post"], serializer_class=s.EmptySerializer, **NO_PAGING)
    def test(self, request: Request, pk: str | None = None) -> Response:
        hook = self.get_object()
        _body(s.EmptySerializer, request)
        delivery = _module("hooks").hook_test(actor=self.user, hook=hook)
        fresh = HookDelivery.objects.for_user(self.user, self.view_action).select_related("hook").get(pk=delivery.pk)
        return Response(s.HookDeliverySerializer(fresh, context=self.get_serializer_context()).data)


class HookDeliveryViewSet(TenantReadOnlyViewSet):
    """The calls of your organisations' hooks, newest first (needs `hooks.manage`)."""

    model = HookDelivery
    view_action = "hooks.manage"
    write_action = "hooks.manage"
    serializer_class = s.HookDeliverySerializer
    filterset_class = filters.HookDeliveryFilter
    pagination_class = CreatedCursorPagination

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("hook")


# --- approvals -------------------------------------------------------------------------------------------------
class ApprovalViewSet(TenantReadOnlyViewSet):
    """Launch requests over their catalog item's price threshold. Approvers (`deployments.approve`) see their
    organisation's; requesters see their own. Nobody decides their own request."""

    model = Approval
    view_action = "deployments.view"
    write_action = "deployments.approve"
    serializer_class = s.ApprovalSerializer
    filterset_class = filters.ApprovalFilter

    def get_queryset(self) -> Any:
        approvers_of = get_access(self.user).orgs_allowing(self.write_action)
        return super().get_queryset().filter(
            Q(organization_id__in=approvers_of) | Q(requested_by_id=self.user.pk)
            | Q(deployment__owner_id=self.user.pk)
        )

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("project", "deployment", "requested_by", "decided_by")

    def _decide(self, approve: bool) -> Response:
        approval = self.get_object()  # first: an invisible approval answers 404 whatever the body
        data = _body(s.DecisionSerializer, self.request)
        services.approval_decide(actor=self.user, approval=approval, approve=approve, comment=data["comment"])
        fresh = self.get_queryset().get(pk=approval.pk)
        return Response(s.ApprovalSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(request=s.DecisionSerializer, responses=s.ApprovalSerializer,
                   description="Approve the launch (the quota is taken again now): it starts at once.")
    @action(detail=True, methods=["post"], serializer_class=s.DecisionSerializer, **NO_PAGING)
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(True)

    @extend_schema(request=s.DecisionSerializer, responses=s.ApprovalSerializer,
                   description="Reject the launch; `comment` (required) tells the requester why.")
    @action(detail=True, methods=["post"], serializer_class=s.DecisionSerializer, **NO_PAGING)
    def reject(self, request: Request, pk: str | None = None) -> Response:
        return self._decide(False)


# --- operations ------------------------------------------------------------------------------------------------
class OperationViewSet(TenantReadOnlyViewSet):
    """Provider operations of the servers of the deployments you can see (create, start, stop, reboot, resize,
    delete), newest first: steps, attempts and errors."""

    model = Operation
    view_action = "deployments.view"
    write_action = "deployments.operate"
    serializer_class = s.OperationSerializer
    filterset_class = filters.OperationFilter
    pagination_class = CreatedCursorPagination

    def get_queryset(self) -> Any:
        # the operations of deployments' servers only (they name their instance); cloud syncs and image pushes
        # belong to the clouds and catalog
        return super().get_queryset().filter(project__isnull=False, params__has_key="instance_id")

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("account", "created_by")


__all__ = [
    "ApprovalViewSet",
    "DeploymentViewSet",
    "HookDeliveryViewSet",
    "HookViewSet",
    "InstanceViewSet",
    "OperationViewSet",
    "QuotaViewSet",
]
