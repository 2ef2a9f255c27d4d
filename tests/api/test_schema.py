from __future__ import annotations

import re

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_schema_endpoint(api, sam):
    response = api(sam).get("/api/v1/schema/")
    assert response.status_code == 200
    text = response.content.decode()
    assert text.startswith("openapi: 3")
    for path in (
        "/api/v1/projects/",
        "/api/v1/tokens/",
        "/api/v1/audit-events/export/",
        "/api/v1/me/",
        "/api/v1/invitations/accept/",
        "/api/v1/notifications/mark-read/",
    ):
        assert f"{path}:" in text
    assert "tokenAuth" in text


@pytest.mark.django_db
def test_docs_work_offline(api, sam):
    response = api(sam).get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    for marker in ("cdn", "unpkg", "jsdelivr", "googleapis"):
        assert marker not in html.lower()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls


def test_schema_generates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3")


@pytest.mark.django_db
def test_api_root_lists_every_endpoint(api, sam):
    body = api(sam).get("/api/v1/").json()
    assert set(body) == {
        "organizations",
        "projects",
        "memberships",
        "invitations",
        "tokens",
        "audit-events",
        "notifications",
        "me",
        "cloud-accounts",
        "cloud-grants",
        "flavors",
        "cloud-images",
        "networks",
        "images",
        "image-copies",
        "image-shares",
        "hardware-profiles",
        "blueprints",
        "blueprint-versions",
        "catalog-items",
        "deployments",
        "instances",
        "quotas",
        "hooks",
        "hook-deliveries",
        "approvals",
        "operations",
    }
