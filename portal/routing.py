"""Websocket routes. portal/asgi.py wraps them in the origin check and SessionOrTokenAuthMiddleware."""

from django.urls import path

from apps.accounts.consumers import NotificationConsumer
from apps.catalog.consumers import CatalogConsumer
from apps.deployments.consumers import DeploymentConsumer

websocket_urlpatterns = [
    path("ws/notifications/", NotificationConsumer.as_asgi()),
    path("ws/catalog/", CatalogConsumer.as_asgi()),
    path("ws/deployments/", DeploymentConsumer.as_asgi()),
]
