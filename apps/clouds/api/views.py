"""Clouds API. Scoping comes from the Tenant* base classes; every write calls apps.clouds.services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.clouds import services
from apps.clouds.api import filters, serializers
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.clouds.selectors import seconds_ago
from apps.core.api.views import TenantListCreateDestroyViewSet, TenantReadOnlyViewSet, TenantViewSet


class CloudAccountViewSet(TenantViewSet):
    """Cloud accounts of your organisations (needs `clouds.view`; changes need `clouds.manage`). Credentials are
    write-only. DELETE deactivates the account; `sync` queues a catalogue sync; `health` answers its health."""

    model = CloudAccount
    view_action = "clouds.view"
    write_action = "clouds.manage"
    filterset_class = filters.CloudAccountFilter

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return serializers.CloudAccountUpdateSerializer
        return serializers.CloudAccountSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.cloud_account_create(actor=self.user, **serializer.validated_data)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.cloud_account_update(
            actor=self.user, account=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance: CloudAccount) -> None:
        services.cloud_account_deactivate(actor=self.user, account=instance)

    @extend_schema(request=None, responses={202: serializers.SyncQueuedSerializer},
                   description="Queue a sync of flavors, images and networks of every region of the account.")
    @action(detail=True, methods=["post"], filterset_class=None, pagination_class=None)
    def sync(self, request: Request, pk: str | None = None) -> Response:
        account = self.get_object()
        services.cloud_account_request_sync(actor=self.user, account=account)
        return Response({"queued": True, "account": account.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=serializers.HealthSerializer, description="Health of the account and its last sync.")
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def health(self, request: Request, pk: str | None = None) -> Response:
        a = self.get_object()
        body = {
            "health": a.health, "health_message": a.health_message, "last_success_at": a.last_success_at,
            "last_failure_at": a.last_failure_at, "last_sync_at": a.last_sync_at,
            "synced_seconds_ago": seconds_ago(a.last_sync_at),
        }
        return Response(serializers.HealthSerializer(body).data)

    @extend_schema(request=serializers.CredentialsSerializer, responses=serializers.CloudAccountSerializer,
                   description="Replace the credentials (checked with the provider first). Audited, without them.")
    @action(detail=True, methods=["post"], url_path="rotate-credentials", filterset_class=None,
            pagination_class=None, serializer_class=serializers.CredentialsSerializer)
    def rotate_credentials(self, request: Request, pk: str | None = None) -> Response:
        account = self.get_object()
        payload = serializers.CredentialsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        account = services.cloud_account_rotate_credentials(
            actor=self.user, account=account, credentials=payload.validated_data["credentials"]
        )
        return Response(serializers.CloudAccountSerializer(account, context=self.get_serializer_context()).data)


class CloudGrantViewSet(TenantListCreateDestroyViewSet):
    """Cloud accounts delegated to projects (needs `clouds.view`; granting needs `grants.manage`). DELETE revokes:
    new launches stop at once, running servers keep running."""

    model = CloudGrant
    view_action = "clouds.view"
    write_action = "grants.manage"
    serializer_class = serializers.CloudGrantSerializer
    filterset_class = filters.CloudGrantFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("account", "project", "granted_by", "revoked_by")

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.grant_create(actor=self.user, **serializer.validated_data)

    def perform_destroy(self, instance: CloudGrant) -> None:
        services.grant_revoke(actor=self.user, grant=instance)


class FlavorViewSet(TenantViewSet):
    """Flavors (sizes) synced from cloud accounts, per region. PATCH `price_override_per_hour` needs
    `clouds.manage`."""

    model = Flavor
    view_action = "clouds.view"
    write_action = "clouds.manage"
    http_method_names = ["get", "patch", "head", "options"]
    serializer_class = serializers.FlavorSerializer
    filterset_class = filters.FlavorFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("account")

    def perform_update(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = services.flavor_set_price(
            actor=self.user, flavor=serializer.instance,
            price_per_hour=data.get("price_override_per_hour", serializer.instance.price_override_per_hour),
        )


class CloudImageViewSet(TenantReadOnlyViewSet):
    """Images synced from cloud accounts, per region (the account's own and allow-listed owners/patterns)."""

    model = CloudImage
    view_action = "clouds.view"
    write_action = "clouds.manage"
    serializer_class = serializers.CloudImageSerializer
    filterset_class = filters.CloudImageFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("account")


class NetworkViewSet(TenantReadOnlyViewSet):
    """Networks synced from cloud accounts, per region."""

    model = Network
    view_action = "clouds.view"
    write_action = "clouds.manage"
    serializer_class = serializers.NetworkSerializer
    filterset_class = filters.NetworkFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("account")
