from __future__ import annotations

import datetime

import pytest
from django.core import mail
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Invitation, Membership, User
from apps.core.models import AuditEvent
from tests.api.conftest import count


@pytest.mark.django_db
class TestMemberships:
    def test_sam_grants_an_org_role_to_a_member(self, api, sam, dennis, acme):
        response = api(sam).post(
            "/api/v1/memberships/",
            {"user": "Dennis", "organization": acme.pk, "role": "manager"},
            format="json",
        )
        assert response.status_code == 201, response.content
        assert response.json()["user"] == "dennis" and response.json()["project"] is None
        assert Membership.objects.all_tenants().filter(user=dennis, project=None, role="manager").exists()

    def test_organisation_is_taken_from_the_project(self, api, sam, vera, data):
        response = api(sam).post(
            "/api/v1/memberships/", {"user": "vera", "project": data.pk, "role": "viewer"}, format="json"
        )
        assert response.status_code == 201, response.content
        assert response.json()["organization"] == data.organization_id

    def test_people_from_elsewhere_need_an_invitation(self, api, sam, mallory, acme, globex):
        services.membership_create(actor=None, user=sam, organization=globex, role="admin")
        before = count(Membership)
        response = api(sam).post(
            "/api/v1/memberships/",
            {"user": "mallory", "organization": acme.pk, "role": "manager"},
            format="json",
        )
        assert response.status_code == 400
        assert "invite" in response.json()["error"]["fields"]["user"][0]
        assert count(Membership) == before

    def test_unknown_or_invisible_user_does_not_exist(self, api, sam, mallory, acme):
        before = count(Membership)
        for username in ("mallory", "nobody"):
            response = api(sam).post(
                "/api/v1/memberships/",
                {"user": username, "organization": acme.pk, "role": "manager"},
                format="json",
            )
            assert response.status_code == 400
            assert "does not exist" in response.json()["error"]["fields"]["user"][0]
        assert count(Membership) == before

    def test_role_must_fit_the_scope(self, api, sam, connor, acme):
        response = api(sam).post(
            "/api/v1/memberships/",
            {"user": "connor", "organization": acme.pk, "role": "viewer"},
            format="json",
        )
        assert response.status_code == 400
        assert "role" in response.json()["error"]["fields"]

    def test_sam_changes_role_and_expiry(self, api, sam, vera, web):
        membership = Membership.objects.all_tenants().get(user=vera, project=web)
        expiry = (timezone.now() + datetime.timedelta(days=30)).isoformat()
        response = api(sam).patch(
            f"/api/v1/memberships/{membership.pk}/", {"role": "member", "expires_at": expiry}, format="json"
        )
        assert response.status_code == 200, response.content
        membership.refresh_from_db()
        assert membership.role == "member" and membership.expires_at is not None
        assert (
            AuditEvent.objects.all_tenants()
            .filter(verb="membership.update", object_id=str(membership.pk))
            .exists()
        )

    def test_expiry_in_the_past_is_refused(self, api, sam, vera, web):
        membership = Membership.objects.all_tenants().get(user=vera, project=web)
        past = (timezone.now() - datetime.timedelta(days=1)).isoformat()
        response = api(sam).patch(
            f"/api/v1/memberships/{membership.pk}/", {"expires_at": past}, format="json"
        )
        assert response.status_code == 400
        assert "expires_at" in response.json()["error"]["fields"]
        membership.refresh_from_db()
        assert membership.expires_at is None

    def test_user_and_project_cannot_be_patched(self, api, sam, vera, web, data):
        membership = Membership.objects.all_tenants().get(user=vera, project=web)
        response = api(sam).patch(
            f"/api/v1/memberships/{membership.pk}/", {"user": "sam", "project": data.pk}, format="json"
        )
        assert response.status_code == 400
        assert set(response.json()["error"]["fields"]) == {"user", "project"}
        membership.refresh_from_db()
        assert (membership.user_id, membership.project_id) == (vera.pk, web.pk)

    def test_sam_removes_a_member(self, api, sam, vera, web):
        membership = Membership.objects.all_tenants().get(user=vera, project=web)
        assert api(sam).delete(f"/api/v1/memberships/{membership.pk}/").status_code == 204
        assert not Membership.objects.all_tenants().filter(pk=membership.pk).exists()

    def test_last_admin_stays(self, api, sam):
        membership = Membership.objects.all_tenants().get(user=sam, role="admin")
        response = api(sam).delete(f"/api/v1/memberships/{membership.pk}/")
        assert response.status_code == 400
        assert "admin" in response.json()["error"]["message"]
        assert Membership.objects.all_tenants().filter(pk=membership.pk).exists()

    def test_viewer_sees_but_cannot_change(self, api, vera, web):
        membership = Membership.objects.all_tenants().get(user=vera, project=web)
        client = api(vera)
        assert client.get(f"/api/v1/memberships/{membership.pk}/").status_code == 200
        assert (
            client.patch(
                f"/api/v1/memberships/{membership.pk}/", {"role": "member"}, format="json"
            ).status_code
            == 403
        )
        assert client.delete(f"/api/v1/memberships/{membership.pk}/").status_code == 403
        membership.refresh_from_db()
        assert membership.role == "viewer"

    def test_filters(self, api, sam, acme, web):
        rows = api(sam).get(f"/api/v1/memberships/?project={web.pk}").json()["results"]
        assert {r["user"] for r in rows} == {"dennis", "connor", "vera"}
        rows = api(sam).get("/api/v1/memberships/?user=CONNOR").json()["results"]
        assert len(rows) == 2 and {r["user"] for r in rows} == {"connor"}
        rows = api(sam).get(f"/api/v1/memberships/?organization={acme.pk}&role=admin").json()["results"]
        assert [r["user"] for r in rows] == ["sam"]


@pytest.mark.django_db
class TestInvitations:
    def test_sam_invites_and_gets_the_link_once(
        self, api, sam, acme, web, django_capture_on_commit_callbacks
    ):
        client = api(sam)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                "/api/v1/invitations/",
                {"project": web.pk, "email": "Newbie@Example.com", "role": "member"},
                format="json",
            )
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["email"] == "newbie@example.com" and body["status"] == "pending"
        assert body["organization"] == acme.pk and body["invited_by"] == "sam"
        link = body["accept_url"]
        secret = link.rstrip("/").rsplit("/", 1)[1]
        invitation = Invitation.objects.all_tenants().get(pk=body["id"])
        assert invitation.token_hash == Invitation.hash_secret(secret)
        assert link in mail.outbox[0].body

        again = client.get(f"/api/v1/invitations/{body['id']}/")
        listed = client.get("/api/v1/invitations/")
        for r in (again, listed):
            assert r.status_code == 200
            assert secret not in r.content.decode() and invitation.token_hash not in r.content.decode()
            assert b"accept_url" not in r.content and b"token_hash" not in r.content

    def test_invitee_accepts_through_the_api(self, api, sam, web):
        _, secret = services.invitation_create(
            actor=sam, organization=web.organization, project=web, email="newbie@example.com", role="member"
        )
        newbie = User.objects.create_user(username="newbie", email="newbie@example.com", password="x" * 12)
        client = api(newbie)
        response = client.post("/api/v1/invitations/accept/", {"token": secret}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["project"] == web.pk and response.json()["role"] == "member"
        assert [p["slug"] for p in client.get("/api/v1/me/").json()["projects"]] == ["web"]
        # a second use is refused
        response = client.post("/api/v1/invitations/accept/", {"token": secret}, format="json")
        assert response.status_code == 400
        assert "accepted" in response.json()["error"]["message"]

    def test_wrong_token_or_wrong_person(self, api, sam, connor, web):
        _, secret = services.invitation_create(
            actor=sam, organization=web.organization, project=web, email="newbie@example.com", role="member"
        )
        before = count(Membership)
        assert (
            api(connor).post("/api/v1/invitations/accept/", {"token": "nope"}, format="json").status_code
            == 400
        )
        response = api(connor).post("/api/v1/invitations/accept/", {"token": secret}, format="json")
        assert response.status_code == 400
        assert "another email" in response.json()["error"]["message"]
        assert count(Membership) == before

    def test_revoke(self, api, sam, web):
        invitation, _ = services.invitation_create(
            actor=sam, organization=web.organization, project=web, email="newbie@example.com", role="member"
        )
        client = api(sam)
        assert client.delete(f"/api/v1/invitations/{invitation.pk}/").status_code == 204
        invitation.refresh_from_db()
        assert invitation.status == "revoked"
        assert client.get(f"/api/v1/invitations/{invitation.pk}/").json()["status"] == "revoked"
        assert client.delete(f"/api/v1/invitations/{invitation.pk}/").status_code == 400
        assert [i["id"] for i in client.get("/api/v1/invitations/?status=revoked").json()["results"]] == [
            invitation.pk
        ]
        assert client.get("/api/v1/invitations/?status=pending").json()["results"] == []

    def test_member_cannot_invite(self, api, connor, web, django_capture_on_commit_callbacks):
        before = count(Invitation)
        with django_capture_on_commit_callbacks(execute=True):
            response = api(connor).post(
                "/api/v1/invitations/",
                {"project": web.pk, "email": "x@example.com", "role": "viewer"},
                format="json",
            )
        assert response.status_code == 403
        assert count(Invitation) == before
        assert mail.outbox == []

    def test_invitations_are_invisible_without_members_manage(self, api, sam, vera, web):
        invitation, _ = services.invitation_create(
            actor=sam, organization=web.organization, project=web, email="newbie@example.com", role="member"
        )
        assert api(vera).get("/api/v1/invitations/").json()["results"] == []
        assert api(vera).get(f"/api/v1/invitations/{invitation.pk}/").status_code == 404
        assert api(vera).delete(f"/api/v1/invitations/{invitation.pk}/").status_code == 404
        invitation.refresh_from_db()
        assert invitation.status == "pending"


@pytest.mark.django_db
def test_a_token_cannot_accept_an_invitation_to_another_organisation(
    sam, mallory, globex, ops, acme, token_api
):
    _, secret = services.invitation_create(
        actor=mallory, organization=globex, project=ops, email=sam.email, role="member"
    )
    client, _, _ = token_api(sam, acme, scope="write")
    before = count(Membership)
    response = client.post("/api/v1/invitations/accept/", {"token": secret}, format="json")
    assert response.status_code == 400
    assert "another organisation" in response.json()["error"]["message"]
    assert count(Membership) == before
    assert Invitation.objects.all_tenants().get(project=ops).status == "pending"


@pytest.mark.django_db
def test_a_token_accepts_an_invitation_to_its_own_organisation(connor, sam, acme, token_api):
    _, secret = services.invitation_create(actor=sam, organization=acme, email=connor.email, role="security")
    client, _, _ = token_api(connor, acme, scope="write")
    response = client.post("/api/v1/invitations/accept/", {"token": secret}, format="json")
    assert response.status_code == 200, response.content
    assert Membership.objects.all_tenants().filter(user=connor, project=None, role="security").exists()
