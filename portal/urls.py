from django.urls import include, path

from apps.core import health
from apps.deployments import demo_hook

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("apps.core.urls")),
    path("accounts/", include("apps.accounts.urls")),
    path("clouds/", include("apps.clouds.urls")),
    path("catalog/", include("apps.catalog.urls")),
    path("deployments/", include("apps.deployments.urls")),
    path("api/v1/", include("portal.api_urls")),
    # the demo's own before-launch hook receiver (authenticated by the hook's signature)
    path("demo/hooks/name-policy/", demo_hook.name_policy, name="demo-hook-name-policy"),
]
