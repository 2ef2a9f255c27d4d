"""Bad input answers 400 with the structured error body and writes nothing."""

from __future__ import annotations

import pytest

from apps.accounts.models import ApiToken, Invitation, Membership, Project
from tests.api.conftest import count

MODELS = (Project, Membership, Invitation, ApiToken)


def _counts():
    return [count(m) for m in MODELS]


@pytest.mark.django_db
class TestBadInput:
    @pytest.mark.parametrize("prefix", ["projects", "memberships", "invitations", "tokens"])
    def test_malformed_json(self, api, sam, prefix):
        before = _counts()
        response = api(sam).post(f"/api/v1/{prefix}/", data='{"name": ', content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "malformed_request"
        assert _counts() == before

    @pytest.mark.parametrize("prefix", ["projects", "memberships", "invitations", "tokens"])
    def test_body_must_be_an_object(self, api, sam, prefix):
        before = _counts()
        response = api(sam).post(f"/api/v1/{prefix}/", data="[1, 2]", content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid"
        assert _counts() == before

    def test_form_encoding_is_refused(self, api, sam, acme):
        before = _counts()
        response = api(sam).post(
            "/api/v1/projects/",
            data=f"organization={acme.pk}&name=x",
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 415
        assert _counts() == before

    @pytest.mark.parametrize(
        "prefix, payload, fields",
        [
            ("projects", {"organization": "abc", "name": ["x"]}, {"organization", "name"}),
            (
                "projects",
                {"organization": "<acme>", "name": "x" * 101, "slug": "not a slug"},
                {"name", "slug"},
            ),
            ("projects", {"organization": "<acme>", "name": "ok", "colour": "red"}, {"colour"}),
            ("memberships", {"user": 5, "organization": "<acme>", "role": "owner"}, {"user", "role"}),
            (
                "memberships",
                {"user": "vera", "organization": "<acme>", "role": "viewer", "expires_at": "soon"},
                {"expires_at"},
            ),
            (
                "invitations",
                {"organization": "<acme>", "email": "not-an-email", "role": "manager"},
                {"email"},
            ),
            (
                "invitations",
                {"organization": "<acme>", "email": "a@b.example", "role": "manager", "token_hash": "x"},
                {"token_hash"},
            ),
            ("tokens", {"organization": "<acme>", "name": "", "scope": "write"}, {"name"}),
            ("tokens", {"organization": "<acme>", "name": "t", "secret": "sky_mine"}, {"secret"}),
            ("tokens", {"organization": "<acme>", "name": "t", "key_hash": "0" * 64}, {"key_hash"}),
        ],
    )
    def test_field_errors(self, api, sam, acme, prefix, payload, fields):
        payload = {k: acme.pk if v == "<acme>" else v for k, v in payload.items()}
        before = _counts()
        response = api(sam).post(f"/api/v1/{prefix}/", payload, format="json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "invalid"
        assert set(error["fields"]) == fields
        assert _counts() == before

    def test_foreign_ids_do_not_exist(self, api, sam, acme, globex, ops):
        client = api(sam)
        before = _counts()
        cases = [
            ("projects", {"organization": globex.pk, "name": "x"}, "organization"),
            ("memberships", {"user": "connor", "project": ops.pk, "role": "viewer"}, "project"),
            ("memberships", {"user": "connor", "organization": globex.pk, "role": "manager"}, "organization"),
            ("invitations", {"project": ops.pk, "email": "a@b.example", "role": "viewer"}, "project"),
            (
                "invitations",
                {"organization": globex.pk, "email": "a@b.example", "role": "manager"},
                "organization",
            ),
            ("tokens", {"organization": globex.pk, "name": "x"}, "organization"),
        ]
        for prefix, payload, field in cases:
            response = client.post(f"/api/v1/{prefix}/", payload, format="json")
            assert response.status_code == 400, (prefix, response.content)
            messages = response.json()["error"]["fields"][field]
            assert "does not exist" in messages[0], messages
        assert _counts() == before

    def test_project_of_another_org_with_own_org(self, api, sam, acme, globex, ops):
        from apps.accounts import services

        services.membership_create(actor=None, user=sam, organization=globex, role="admin")
        before = _counts()
        response = api(sam).post(
            "/api/v1/invitations/",
            {"organization": acme.pk, "project": ops.pk, "email": "a@b.example", "role": "viewer"},
            format="json",
        )
        assert response.status_code == 400
        assert "another organisation" in response.json()["error"]["fields"]["project"][0]
        assert _counts() == before

    def test_wrong_types_on_patch(self, api, sam, web):
        response = api(sam).patch(
            f"/api/v1/projects/{web.pk}/", {"is_archived": "maybe", "name": None}, format="json"
        )
        assert response.status_code == 400
        assert set(response.json()["error"]["fields"]) == {"is_archived", "name"}
        web.refresh_from_db()
        assert (web.name, web.is_archived) == ("Web", False)

    def test_bad_list_filter(self, api, sam):
        response = api(sam).get("/api/v1/projects/?organization=abc")
        assert response.status_code == 400
        assert "organization" in response.json()["error"]["fields"]

    def test_errors_carry_the_request_id(self, api, sam):
        response = api(sam).post("/api/v1/projects/", {}, format="json", HTTP_X_REQUEST_ID="abcdef123456")
        assert response.status_code == 400
        assert response.json()["error"]["request_id"] == "abcdef123456"
