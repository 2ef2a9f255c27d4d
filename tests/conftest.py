"""Shared fixtures: the demo personas (sam admin, marty manager, sarah security, dennis designer, connor member,
vera viewer in web, mallory admin of Globex) and API clients signed in as each."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.demo import seed_accounts
from apps.accounts.models import Organization, Project, User


@pytest.fixture(autouse=True)
def _isolated_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    # seed once per test database; every test runs in a transaction that rolls back to this state
    # (transactional tests flush the tables, and `personas` seeds again when it finds them empty)
    with django_db_blocker.unblock():
        seed_accounts()
    yield
    # on PostgreSQL each alias keeps a connection pool (settings.DATABASES OPTIONS "pool"): its idle connections
    # would keep the test database from being dropped
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all(initialized_only=True):
            if getattr(connection, "pool", None) is not None:
                connection.close_pool()


@pytest.fixture
def personas(db) -> dict[str, User]:
    return seed_accounts()


def _persona(name):
    @pytest.fixture
    def fixture(personas):
        return personas[name]

    fixture.__name__ = name
    return fixture


sam = _persona("sam")
marty = _persona("marty")
sarah = _persona("sarah")
dennis = _persona("dennis")
connor = _persona("connor")
vera = _persona("vera")
mallory = _persona("mallory")


@pytest.fixture
def acme(personas) -> Organization:
    return Organization.objects.all_tenants().get(slug="acme")


@pytest.fixture
def globex(personas) -> Organization:
    return Organization.objects.all_tenants().get(slug="globex")


@pytest.fixture
def web(acme) -> Project:
    return Project.objects.all_tenants().get(organization=acme, slug="web")


@pytest.fixture
def data(acme) -> Project:
    return Project.objects.all_tenants().get(organization=acme, slug="data")


@pytest.fixture
def ops(globex) -> Project:
    return Project.objects.all_tenants().get(organization=globex, slug="ops")


@pytest.fixture
def api():
    """api(user) → an APIClient signed in (session) as that user; api() → anonymous."""

    def make(user: User | None = None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_login(user)
        return client

    return make


def pytest_terminal_summary(terminalreporter):
    """Say what the generated isolation walk covered and what it left out, with the reasons."""
    try:
        from tests import test_route_walk as walk
    except Exception:  # the walk was not importable in this process (e.g. a partial run)
        return
    if not any("test_route_walk" in str(getattr(r, "nodeid", "")) for r in terminalreporter.stats.get("passed", [])):
        return
    terminalreporter.write_line(
        f"isolation walk: {len(walk.ROUTES)} routes walked, {len(walk.EXCLUDED)} excluded:"
    )
    for name, reason in sorted(walk.EXCLUDED.items()):
        terminalreporter.write_line(f"  - {name}: {reason}")
