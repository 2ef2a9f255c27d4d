"""/api/v1/: one router for every app's viewsets, plus `me`, the OpenAPI schema and its Swagger UI."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from apps.accounts.api import views as accounts
from apps.catalog.api import views as catalog
from apps.clouds.api import views as clouds
from apps.core.api.audit import AuditEventViewSet
from apps.deployments.api import views as deployments

app_name = "api"


class SkyportRouter(DefaultRouter):
    """DefaultRouter whose API root also lists the plain views registered with `register_view`."""

    def __init__(self) -> None:
        super().__init__(trailing_slash=True)
        self.extra_root: dict[str, str] = {}

    def register_view(self, prefix: str, url_name: str) -> None:
        self.extra_root[prefix] = url_name

    def get_api_root_view(self, api_urls: Any = None) -> Any:
        root = {
            prefix: self.routes[0].name.format(basename=basename) for prefix, _, basename in self.registry
        }
        root.update(self.extra_root)
        return self.APIRootView.as_view(api_root_dict=dict(sorted(root.items())))


router = SkyportRouter()
router.register("organizations", accounts.OrganizationViewSet, basename="organization")
router.register("projects", accounts.ProjectViewSet, basename="project")
router.register("memberships", accounts.MembershipViewSet, basename="membership")
router.register("invitations", accounts.InvitationViewSet, basename="invitation")
router.register("tokens", accounts.ApiTokenViewSet, basename="token")
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("notifications", accounts.NotificationViewSet, basename="notification")
router.register("cloud-accounts", clouds.CloudAccountViewSet, basename="cloud-account")
router.register("cloud-grants", clouds.CloudGrantViewSet, basename="cloud-grant")
router.register("flavors", clouds.FlavorViewSet, basename="flavor")
router.register("cloud-images", clouds.CloudImageViewSet, basename="cloud-image")
router.register("networks", clouds.NetworkViewSet, basename="network")
router.register("images", catalog.ImageViewSet, basename="image")
router.register("image-copies", catalog.ImageCopyViewSet, basename="image-copy")
router.register("image-shares", catalog.ImageShareViewSet, basename="image-share")
router.register("hardware-profiles", catalog.HardwareProfileViewSet, basename="hardware-profile")
router.register("blueprints", catalog.BlueprintViewSet, basename="blueprint")
router.register("blueprint-versions", catalog.BlueprintVersionViewSet, basename="blueprint-version")
router.register("catalog-items", catalog.CatalogItemViewSet, basename="catalog-item")
router.register("deployments", deployments.DeploymentViewSet, basename="deployment")
router.register("instances", deployments.InstanceViewSet, basename="instance")
router.register("quotas", deployments.QuotaViewSet, basename="quota")
router.register("hooks", deployments.HookViewSet, basename="hook")
router.register("hook-deliveries", deployments.HookDeliveryViewSet, basename="hook-delivery")
router.register("approvals", deployments.ApprovalViewSet, basename="approval")
router.register("operations", deployments.OperationViewSet, basename="operation")
router.register_view("me", "me")

urlpatterns = [
    path("me/", accounts.MeView.as_view(), name="me"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    *router.urls,
]
