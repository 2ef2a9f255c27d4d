import datetime
import re
from urllib.parse import urlparse

import pytest
from django.core import mail
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import Invitation, Membership, User

PASSWORD = "violet-harbour-crane-81"


def invite(client, django_capture_on_commit_callbacks, **data):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post("/org/invitations/", data)


def link_path(message) -> str:
    found = re.search(r"https?://\S+/accounts/invitations/\S+/", message.body)
    assert found, message.body
    return urlparse(found.group(0)).path


def memberships_of(email):
    return Membership.objects.all_tenants().filter(user__email__iexact=email)


@pytest.mark.django_db
class TestInvitationFlow:
    def test_invite_sign_up_and_reuse(self, client_as, sam, acme, web, django_capture_on_commit_callbacks):
        response = invite(
            client_as(sam),
            django_capture_on_commit_callbacks,
            email="new@acme.example",
            role="member",
            project=web.pk,
        )
        assert response.status_code == 302
        assert len(mail.outbox) == 1
        assert mail.outbox[0].to == ["new@acme.example"]
        path = link_path(mail.outbox[0])
        secret = path.rstrip("/").rsplit("/", 1)[1]
        # the secret travels only in the email, never in the inviter's page
        assert secret not in client_as(sam).get("/org/members/").content.decode()

        visitor = client_as()
        page = visitor.get(path)
        assert page.status_code == 200
        text = page.content.decode()
        for shown in ("Acme", "Web", "Member (consumer)", "Sam Sysadmin", "new@acme.example"):
            assert shown in text

        response = visitor.post(
            path,
            {"username": "newbie", "full_name": "New Person", "password1": PASSWORD, "password2": PASSWORD},
        )
        assert response.status_code == 302
        user = User.objects.get(username="newbie")
        assert (user.email, user.first_name, user.last_name) == ("new@acme.example", "New", "Person")
        membership = memberships_of("new@acme.example").get()
        assert (membership.organization_id, membership.project_id, membership.role) == (
            acme.pk,
            web.pk,
            "member",
        )
        assert visitor.session["_auth_user_id"] == str(user.pk)
        assert visitor.get("/")["Location"] == "/home/consumer/"

        # the link is spent
        again = client_as()
        page = again.get(path)
        assert page.status_code == 410
        assert "already been used" in page.content.decode()
        response = again.post(
            path, {"username": "second", "full_name": "", "password1": PASSWORD, "password2": PASSWORD}
        )
        assert response.status_code == 410
        assert not User.objects.filter(username="second").exists()
        assert memberships_of("new@acme.example").count() == 1

    def test_unknown_link_shows_a_clear_message(self, client_as, personas):
        response = client_as().get("/accounts/invitations/not-a-real-secret/")
        assert response.status_code == 404
        assert "not valid" in response.content.decode()
        assert client_as().get("/accounts/invitations/" + "x" * 150 + "/").status_code == 404

    def test_expired_and_revoked_links(self, client_as, sam, acme):
        invitation, secret = services.invitation_create(
            actor=sam, organization=acme, email="late@acme.example", role="security"
        )
        Invitation.objects.all_tenants().filter(pk=invitation.pk).update(
            expires_at=timezone.now() - datetime.timedelta(minutes=1)
        )
        response = client_as().get(f"/accounts/invitations/{secret}/")
        assert response.status_code == 410
        assert "expired" in response.content.decode()

        invitation, secret = services.invitation_create(
            actor=sam, organization=acme, email="gone@acme.example", role="security"
        )
        services.invitation_revoke(actor=sam, invitation=invitation)
        response = client_as().post(
            f"/accounts/invitations/{secret}/",
            {"username": "gone", "password1": PASSWORD, "password2": PASSWORD},
        )
        assert response.status_code == 410
        assert "withdrawn" in response.content.decode()
        assert not User.objects.filter(username="gone").exists()

    def test_bad_sign_up_input_shows_errors_and_writes_nothing(self, client_as, sam, acme):
        _, secret = services.invitation_create(
            actor=sam, organization=acme, email="x@acme.example", role="manager"
        )
        path = f"/accounts/invitations/{secret}/"
        users = User.objects.count()
        cases = [
            ({"username": "connor", "password1": PASSWORD, "password2": PASSWORD}, "username is taken"),
            ({"username": "fresh", "password1": "short", "password2": "short"}, "too short"),
            ({"username": "fresh", "password1": PASSWORD, "password2": PASSWORD + "x"}, "passwords differ"),
            ({"username": "bad name!", "password1": PASSWORD, "password2": PASSWORD}, "Letters, digits"),
        ]
        for data, message in cases:
            response = client_as().post(path, data)
            assert response.status_code == 200
            assert message in response.content.decode()
        assert User.objects.count() == users
        assert (
            Invitation.objects.all_tenants().get(token_hash=Invitation.hash_secret(secret)).status
            == "pending"
        )

    def test_signed_in_invitee_accepts(self, client_as, sam, acme, data):
        user = User.objects.create_user("pat", "pat@acme.example", PASSWORD)
        _, secret = services.invitation_create(
            actor=sam, organization=acme, email="PAT@acme.example", role="designer", project=data
        )
        client = client_as(user)
        page = client.get(f"/accounts/invitations/{secret}/")
        assert "Accept invitation as pat" in page.content.decode()
        response = client.post(f"/accounts/invitations/{secret}/")
        assert response.status_code == 302
        assert memberships_of("pat@acme.example").get().project_id == data.pk
        assert client.session["org_id"] == acme.pk

    def test_existing_account_is_asked_to_sign_in(self, client_as, sam, acme):
        _, secret = services.invitation_create(
            actor=sam, organization=acme, email="connor@acme.example", role="manager"
        )
        page = client_as().get(f"/accounts/invitations/{secret}/")
        assert "Sign in to accept" in page.content.decode()
        response = client_as().post(
            f"/accounts/invitations/{secret}/",
            {"username": "connor2", "password1": PASSWORD, "password2": PASSWORD},
        )
        assert response.status_code == 200
        assert not User.objects.filter(username="connor2").exists()

    def test_signed_in_as_someone_else_cannot_accept(self, client_as, sam, acme, vera):
        _, secret = services.invitation_create(
            actor=sam, organization=acme, email="other@acme.example", role="manager"
        )
        client = client_as(vera)
        assert (
            "sent to <strong>other@acme.example</strong>"
            in client.get(f"/accounts/invitations/{secret}/").content.decode()
        )
        response = client.post(f"/accounts/invitations/{secret}/")
        assert response.status_code == 200
        assert "another email address" in response.content.decode()
        assert not Membership.objects.all_tenants().filter(user=vera, role="manager").exists()
