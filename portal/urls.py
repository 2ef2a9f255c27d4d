from django.urls import include, path

urlpatterns = [
    path("", include("apps.core.urls")),
    path("accounts/", include("apps.accounts.urls")),
    path("clouds/", include("apps.clouds.urls")),
    path("catalog/", include("apps.catalog.urls")),
    path("api/v1/", include("portal.api_urls")),
]
