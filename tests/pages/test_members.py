import pytest
from django.core import mail

from apps.accounts import services
from apps.accounts.models import Invitation, Membership, Project
from apps.core.models import AuditEvent


def membership(user, project):
    return Membership.objects.all_tenants().get(user=user, project=project)


def snapshot():
    return sorted(
        Membership.objects.all_tenants().values_list("pk", "user_id", "project_id", "role", "expires_at")
    )


@pytest.mark.django_db
class TestMembersList:
    def test_lists_the_current_org_with_roles(self, client_as, vera, sam):
        html = client_as(vera).get("/org/members/").content.decode()
        assert "Sam Sysadmin" in html and "Member (consumer)" in html
        assert "mallory" not in html
        assert "Send invitation" not in html and "/edit/" not in html  # no management for viewers

    def test_admin_sees_management(self, client_as, sam):
        html = client_as(sam).get("/org/members/").content.decode()
        assert "Send invitation" in html and "Add role" in html and "/edit/" in html


@pytest.mark.django_db
class TestChangeRole:
    def test_sam_changes_connors_role_in_web(self, client_as, sam, connor, web, htmx):
        m = membership(connor, web)
        client = client_as(sam)
        form = client.get(f"/org/members/{m.pk}/edit/", **htmx)
        assert form.status_code == 200 and "<html" not in form.content.decode()
        response = client.post(f"/org/members/{m.pk}/edit/", {"role": "designer", "expires_at": ""}, **htmx)
        assert response.status_code == 200
        assert f'id="membership-{m.pk}"' in response.content.decode()
        assert "Designer (application designer)" in response.content.decode()
        assert membership(connor, web).role == "designer"
        assert AuditEvent.objects.all_tenants().filter(verb="membership.update", object_id=str(m.pk)).exists()

    def test_plain_post_redirects_back(self, client_as, sam, connor, web):
        m = membership(connor, web)
        response = client_as(sam).post(
            f"/org/members/{m.pk}/edit/", {"role": "viewer", "expires_at": "2099-01-31T12:00"}
        )
        assert response.status_code == 302 and response["Location"] == "/org/members/"
        m.refresh_from_db()
        assert m.role == "viewer" and m.expires_at.year == 2099

    def test_vera_cannot_change_roles(self, client_as, vera, connor, web, htmx):
        m = membership(connor, web)
        before = snapshot()
        client = client_as(vera)
        assert client.get(f"/org/members/{m.pk}/edit/").status_code == 403
        response = client.post(f"/org/members/{m.pk}/edit/", {"role": "viewer"}, **htmx)
        assert response.status_code == 403
        assert (
            "You are not allowed"
            in client.post(f"/org/members/{m.pk}/edit/", {"role": "viewer"}).content.decode()
        )
        assert client.post(f"/org/members/{m.pk}/remove/").status_code == 403
        assert snapshot() == before

    def test_outsider_gets_404(self, client_as, mallory, connor, web):
        m = membership(connor, web)
        before = snapshot()
        client = client_as(mallory)
        assert client.get(f"/org/members/{m.pk}/edit/").status_code == 404
        assert client.post(f"/org/members/{m.pk}/edit/", {"role": "viewer"}).status_code == 404
        assert client.post(f"/org/members/{m.pk}/remove/").status_code == 404
        assert snapshot() == before

    @pytest.mark.parametrize(
        "data, message",
        [
            ({"role": "admin"}, "Select a valid choice"),  # org role on a project membership
            ({"role": "viewer", "expires_at": "2001-01-01T00:00"}, "must be in the future"),
            ({"role": "viewer", "expires_at": "not a date"}, "Enter a valid date/time"),
        ],
    )
    def test_bad_input_shows_errors_and_writes_nothing(
        self, client_as, sam, connor, web, htmx, data, message
    ):
        m = membership(connor, web)
        before = snapshot()
        response = client_as(sam).post(f"/org/members/{m.pk}/edit/", data, **htmx)
        assert response.status_code == 200
        assert message in response.content.decode()
        assert snapshot() == before

    def test_last_admin_cannot_be_demoted(self, client_as, sam, acme):
        m = Membership.objects.all_tenants().get(user=sam, project=None)
        response = client_as(sam).post(f"/org/members/{m.pk}/edit/", {"role": "manager"})
        assert response.status_code == 200
        assert "at least one admin" in response.content.decode()
        assert Membership.objects.all_tenants().get(pk=m.pk).role == "admin"

    def test_own_change_keeps_the_session(self, client_as, sam, marty, acme):
        services.membership_create(actor=None, user=marty, organization=acme, role="admin")
        m = Membership.objects.all_tenants().get(user=sam, project=None)
        client = client_as(sam)
        client.post(f"/org/members/{m.pk}/edit/", {"role": "admin", "expires_at": "2099-01-01T00:00"})
        assert client.get("/org/members/").status_code == 200


@pytest.mark.django_db
class TestRemoveAndAdd:
    def test_sam_removes_a_membership(self, client_as, sam, connor, web):
        m = membership(connor, web)
        response = client_as(sam).post(f"/org/members/{m.pk}/remove/")
        assert response.status_code == 302
        assert not Membership.objects.all_tenants().filter(pk=m.pk).exists()

    def test_remove_needs_post(self, client_as, sam, connor, web):
        m = membership(connor, web)
        assert client_as(sam).get(f"/org/members/{m.pk}/remove/").status_code == 405
        assert Membership.objects.all_tenants().filter(pk=m.pk).exists()

    def test_add_an_org_user_to_a_project(self, client_as, sam, vera, data):
        response = client_as(sam).post(
            "/org/members/add/", {"user": vera.pk, "project": data.pk, "role": "member"}
        )
        assert response.status_code == 302
        assert membership(vera, data).role == "member"

    @pytest.mark.parametrize(
        "project_slug, form, message",
        [
            (None, {"role": "member"}, "is a project role"),
            ("data", {"role": "admin"}, "is an organisation role"),
            ("web", {"role": "viewer"}, "already has this membership"),
            ("data", {"role": "member", "expires_at": "2001-01-01T00:00"}, "must be in the future"),
            ("ops", {"role": "member"}, "Select a valid choice"),  # a project of another organisation
        ],
    )
    def test_bad_input_shows_errors_and_writes_nothing(
        self, client_as, sam, vera, ops, project_slug, form, message
    ):
        project = Project.objects.all_tenants().get(slug=project_slug) if project_slug else None
        before = snapshot()
        response = client_as(sam).post(
            "/org/members/add/", {"user": vera.pk, "project": project.pk if project else "", **form}
        )
        assert response.status_code == 200
        assert message in response.content.decode()
        assert snapshot() == before

    def test_only_users_of_the_org_can_be_added(self, client_as, sam, mallory, data):
        before = snapshot()
        response = client_as(sam).post(
            "/org/members/add/", {"user": mallory.pk, "project": data.pk, "role": "member"}
        )
        assert "Select a valid choice" in response.content.decode()
        assert snapshot() == before

    def test_vera_cannot_add(self, client_as, vera, data):
        before = snapshot()
        assert (
            client_as(vera)
            .post("/org/members/add/", {"user": vera.pk, "project": data.pk, "role": "member"})
            .status_code
            == 403
        )
        assert snapshot() == before


def pending():
    return sorted(Invitation.objects.all_tenants().values_list("email", "revoked_at"))


@pytest.mark.django_db
class TestInvitations:
    def test_invite_lists_and_revokes(self, client_as, sam, web, django_capture_on_commit_callbacks):
        client = client_as(sam)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                "/org/invitations/",
                {
                    "email": "New@Acme.example",
                    "role": "viewer",
                    "project": web.pk,
                    "membership_expires_at": "2099-06-01T00:00",
                },
            )
        assert response.status_code == 302
        invitation = Invitation.objects.all_tenants().get()
        assert (invitation.email, invitation.role, invitation.project_id) == (
            "new@acme.example",
            "viewer",
            web.pk,
        )
        assert invitation.membership_expires_at.year == 2099
        html = client.get("/org/members/").content.decode()
        assert "new@acme.example" in html and f"/org/invitations/{invitation.pk}/revoke/" in html
        assert client.post(f"/org/invitations/{invitation.pk}/revoke/").status_code == 302
        assert Invitation.objects.all_tenants().get().status == "revoked"
        assert len(mail.outbox) == 1

    def test_others_cannot_revoke(self, client_as, sam, connor, mallory, acme):
        invitation, _ = services.invitation_create(
            actor=sam, organization=acme, email="z@acme.example", role="manager"
        )
        assert client_as(connor).post(f"/org/invitations/{invitation.pk}/revoke/").status_code == 404
        assert client_as(mallory).post(f"/org/invitations/{invitation.pk}/revoke/").status_code == 404
        assert Invitation.objects.all_tenants().get().status == "pending"

    def test_vera_cannot_invite(self, client_as, vera, web):
        response = client_as(vera).post(
            "/org/invitations/", {"email": "a@b.example", "role": "viewer", "project": web.pk}
        )
        assert response.status_code == 403
        assert pending() == []

    @pytest.mark.parametrize(
        "form, message",
        [
            ({"email": "not-an-email", "role": "manager"}, "Enter a valid email address"),
            ({"email": "a@acme.example", "role": "member"}, "is a project role"),
            ({"email": "a@acme.example", "role": "owner"}, "Select a valid choice"),
            ({"email": "", "role": "manager"}, "This field is required"),
        ],
    )
    def test_bad_input_shows_errors_and_writes_nothing(
        self, client_as, sam, form, message, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=True):
            response = client_as(sam).post("/org/invitations/", form)
        assert response.status_code == 200
        assert message in response.content.decode()
        assert pending() == []
        assert mail.outbox == []

    def test_duplicate_pending_invitation_is_refused(self, client_as, sam, acme):
        services.invitation_create(actor=sam, organization=acme, email="dup@acme.example", role="manager")
        response = client_as(sam).post("/org/invitations/", {"email": "dup@acme.example", "role": "security"})
        assert "already a pending invitation" in response.content.decode()
        assert len(pending()) == 1
