from __future__ import annotations

import datetime

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts import services
from apps.accounts.models import ApiToken, Project
from tests.api.conftest import count


def _bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


@pytest.mark.django_db
class TestTokens:
    def test_connor_creates_a_token_and_uses_it(self, api, connor, acme):
        response = api(connor).post(
            "/api/v1/tokens/",
            {"organization": acme.pk, "name": "laptop cli", "scope": "write"},
            format="json",
        )
        assert response.status_code == 201, response.content
        body = response.json()
        secret = body["secret"]
        token = ApiToken.objects.all_tenants().get(pk=body["id"])
        assert secret.startswith("sky_") and body["key_prefix"] == secret[:10]
        assert token.key_hash == ApiToken.hash_secret(secret)
        assert token.key_hash not in response.content.decode() and "key_hash" not in body
        assert body["status"] == "active" and body["user"] == "connor"

        me = _bearer(secret).get("/api/v1/me/")
        assert me.status_code == 200
        assert me.json()["user"]["username"] == "connor"
        assert me.json()["authenticated_by"] == "token"
        assert me.json()["token"]["id"] == token.pk and me.json()["token"]["scope"] == "write"

    def test_secret_and_hash_never_shown_again(self, api, connor, sarah, acme):
        token, secret = services.token_create(actor=connor, organization=acme, name="ci", scope="read")
        responses = [
            api(connor).get("/api/v1/tokens/"),
            api(connor).get(f"/api/v1/tokens/{token.pk}/"),
            api(sarah).get("/api/v1/tokens/"),
            _bearer(secret).get(f"/api/v1/tokens/{token.pk}/"),
            _bearer(secret).get("/api/v1/me/"),
        ]
        for response in responses:
            assert response.status_code == 200
            text = response.content.decode()
            assert secret not in text and token.key_hash not in text
            assert '"secret"' not in text and "key_hash" not in text

    def test_read_token_cannot_post(self, connor, acme, web):
        _, secret = services.token_create(actor=connor, organization=acme, name="ro", scope="read")
        client = _bearer(secret)
        before = (count(ApiToken), count(Project))
        assert client.get("/api/v1/projects/").status_code == 200
        response = client.post(
            "/api/v1/tokens/", {"organization": acme.pk, "name": "escalate", "scope": "write"}, format="json"
        )
        assert response.status_code == 403
        assert client.post("/api/v1/notifications/mark-read/", {}, format="json").status_code == 403
        assert (count(ApiToken), count(Project)) == before

    def test_revoked_token_is_401(self, api, connor, acme):
        token, secret = services.token_create(actor=connor, organization=acme, name="ci", scope="write")
        client = _bearer(secret)
        assert client.get("/api/v1/me/").status_code == 200
        assert api(connor).delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
        response = client.get("/api/v1/me/")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_failed"
        assert response["WWW-Authenticate"] == "Token"
        assert api(connor).get(f"/api/v1/tokens/{token.pk}/").json()["status"] == "revoked"

    def test_expired_token_is_401(self, connor, acme):
        token, secret = services.token_create(actor=connor, organization=acme, name="ci", scope="write")
        ApiToken.objects.all_tenants().filter(pk=token.pk).update(
            expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
        assert _bearer(secret).get("/api/v1/me/").status_code == 401

    def test_token_of_acme_does_not_see_globex(self, api, sam, acme, globex, ops, token_api):
        services.membership_create(actor=None, user=sam, organization=globex, role="admin")
        session = api(sam)
        assert {o["slug"] for o in session.get("/api/v1/organizations/").json()["results"]} == {
            "acme",
            "globex",
        }

        client, _, _ = token_api(sam, acme, scope="write")
        assert [o["slug"] for o in client.get("/api/v1/organizations/").json()["results"]] == ["acme"]
        assert "ops" not in {p["slug"] for p in client.get("/api/v1/projects/").json()["results"]}
        assert client.get(f"/api/v1/projects/{ops.pk}/").status_code == 404
        assert client.get(f"/api/v1/memberships/?organization={globex.pk}").json()["results"] == []
        assert [o["slug"] for o in client.get("/api/v1/me/").json()["organizations"]] == ["acme"]
        before = count(Project)
        response = client.post(
            "/api/v1/projects/", {"organization": globex.pk, "name": "Sneaky"}, format="json"
        )
        assert response.status_code == 400
        assert "does not exist" in response.json()["error"]["fields"]["organization"][0]
        assert count(Project) == before

    def test_security_reviews_and_revokes_others(self, api, connor, sarah, acme):
        token, _ = services.token_create(actor=connor, organization=acme, name="ci", scope="write")
        listed = api(sarah).get("/api/v1/tokens/?user=connor").json()["results"]
        assert [t["id"] for t in listed] == [token.pk]
        assert api(sarah).delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
        token.refresh_from_db()
        assert token.revoked_at is not None
        assert api(connor).get("/api/v1/tokens/?active=false").json()["results"][0]["id"] == token.pk

    @pytest.mark.parametrize("who", ["vera", "marty", "mallory"])
    def test_others_cannot_see_or_revoke(self, api, personas, connor, acme, who):
        token, _ = services.token_create(actor=connor, organization=acme, name="ci", scope="write")
        client = api(personas[who])
        assert client.get("/api/v1/tokens/").json()["results"] == []
        assert client.get(f"/api/v1/tokens/{token.pk}/").status_code == 404
        assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
        token.refresh_from_db()
        assert token.revoked_at is None

    def test_token_for_a_foreign_org_or_too_long(self, api, connor, globex, acme):
        before = count(ApiToken)
        response = api(connor).post(
            "/api/v1/tokens/", {"organization": globex.pk, "name": "x"}, format="json"
        )
        assert response.status_code == 400 and "organization" in response.json()["error"]["fields"]
        far = (timezone.now() + datetime.timedelta(days=4000)).isoformat()
        response = api(connor).post(
            "/api/v1/tokens/", {"organization": acme.pk, "name": "x", "expires_at": far}, format="json"
        )
        assert response.status_code == 400 and "expires_at" in response.json()["error"]["fields"]
        response = api(connor).post(
            "/api/v1/tokens/", {"organization": acme.pk, "name": "x", "scope": "admin"}, format="json"
        )
        assert response.status_code == 400 and "scope" in response.json()["error"]["fields"]
        assert count(ApiToken) == before

    def test_token_default_scope_is_read(self, api, connor, acme):
        response = api(connor).post("/api/v1/tokens/", {"organization": acme.pk, "name": "x"}, format="json")
        assert response.status_code == 201 and response.json()["scope"] == "read"

    def test_bearer_keyword_and_malformed_header(self, connor, acme):
        _, secret = services.token_create(actor=connor, organization=acme, name="ci", scope="read")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert client.get("/api/v1/me/").json()["user"]["username"] == "connor"
        client.credentials(HTTP_AUTHORIZATION="Token")
        assert client.get("/api/v1/me/").status_code == 401
        client.credentials(HTTP_AUTHORIZATION="Token sky_not-a-real-token")
        assert client.get("/api/v1/me/").status_code == 401

    def test_write_token_creates_a_token_for_its_own_organisation_only(self, sam, acme, globex, token_api):
        services.membership_create(actor=None, user=sam, organization=globex, role="admin")
        client, _, _ = token_api(sam, acme, scope="write")
        created = client.post("/api/v1/tokens/", {"organization": acme.pk, "name": "ci"}, format="json")
        assert created.status_code == 201
        before = count(ApiToken)
        response = client.post("/api/v1/tokens/", {"organization": globex.pk, "name": "ci"}, format="json")
        assert response.status_code == 400
        assert count(ApiToken) == before
