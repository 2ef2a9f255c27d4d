"""API test helpers: token clients and row counts."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts import services


@pytest.fixture
def token_api():
    """token_api(user, org, scope="write") → (APIClient authenticated by a fresh token, token row, secret)."""

    def make(user, organization, scope="write"):
        token, secret = services.token_create(
            actor=user, organization=organization, name=f"{scope} token", scope=scope
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client, token, secret

    return make


def count(model, **filters) -> int:
    return model.objects.all_tenants().filter(**filters).count()
