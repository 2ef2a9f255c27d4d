from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture
def client_as():
    """client_as(user) → a Django test client signed in (session) as that user; client_as() → anonymous."""

    def make(user=None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def htmx():
    """Headers of an htmx request."""
    return {"HTTP_HX_REQUEST": "true"}
