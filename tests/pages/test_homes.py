import re

import pytest

from apps.accounts import services
from apps.accounts.models import Membership, User
from apps.core.personas import PERSONAS

ALL_HOMES = [p.slug for p in PERSONAS]


def nav_personas(html: str) -> list[str]:
    return re.findall(r'href="/home/([a-z]+)/"', html.split('id="main-nav"', 1)[1].split("</ul>", 1)[0])


@pytest.mark.django_db
class TestPersonaHomes:
    @pytest.mark.parametrize(
        "name, home",
        [
            ("sam", "sysadmin"),
            ("marty", "infrastructure"),
            ("sarah", "security"),
            ("dennis", "designer"),
            ("connor", "consumer"),
            ("vera", "consumer"),
            ("mallory", "sysadmin"),
        ],
    )
    def test_each_persona_lands_on_its_own_home_only(self, client_as, personas, name, home):
        client = client_as(personas[name])
        response = client.get("/")
        assert response.status_code == 302
        assert response["Location"] == f"/home/{home}/"
        page = client.get(f"/home/{home}/")
        assert page.status_code == 200
        assert nav_personas(page.content.decode()) == [home]
        for other in set(ALL_HOMES) - {home}:
            assert client.get(f"/home/{other}/").status_code == 404

    def test_vera_cannot_open_the_sysadmin_home(self, client_as, vera):
        response = client_as(vera).get("/home/sysadmin/")
        assert response.status_code == 404
        assert "Nothing here" in response.content.decode()

    def test_several_roles_show_the_union(self, client_as, connor, acme):
        services.membership_create(actor=None, user=connor, organization=acme, role="security")
        page = client_as(connor).get("/home/consumer/")
        assert nav_personas(page.content.decode()) == ["security", "consumer"]

    def test_viewer_gets_the_consumer_home_read_only(self, client_as, vera, connor):
        assert "Read-only access" in client_as(vera).get("/home/consumer/").content.decode()
        assert "Read-only access" not in client_as(connor).get("/home/consumer/").content.decode()

    def test_unknown_home_is_404(self, client_as, sam):
        assert client_as(sam).get("/home/root/").status_code == 404

    def test_no_role_yet(self, client_as, personas):
        loner = User.objects.create_user("loner", "loner@acme.example", "x-unused-password-1")
        response = client_as(loner).get("/")
        assert response.status_code == 200
        assert "You have no role yet" in response.content.decode()
        assert client_as(loner).get("/home/consumer/").status_code == 200  # the same explanation, no crash
        assert client_as(loner).get("/org/members/").status_code == 200

    def test_sysadmin_home_shows_real_data(self, client_as, sam, acme, web):
        services.invitation_create(
            actor=sam, organization=acme, email="soon@acme.example", role="viewer", project=web
        )
        html = client_as(sam).get("/home/sysadmin/").content.decode()
        assert "soon@acme.example" in html
        assert "invitation.create" in html  # recent audit events
        # web: connor, dennis, vera; data: connor, dennis
        assert re.search(r"Web</td>\s*<td><code>web</code></td>\s*<td class=\"text-end\">3</td>", html)
        assert re.search(r"Data</td>\s*<td><code>data</code></td>\s*<td class=\"text-end\">2</td>", html)

    def test_infrastructure_home_has_an_honest_empty_state(self, client_as, marty):
        response = client_as(marty).get("/home/infrastructure/")
        html = response.content.decode()
        assert "Usage and cost reports appear once clouds are connected" in html
        assert response.context["chart_data"] == {"labels": [], "datasets": []}
        assert dict((r.value, n) for r, n in response.context["role_counts"])["member"] == 1

    def test_security_home_lists_tokens_without_secrets(self, client_as, sarah, connor, acme):
        token, secret = services.token_create(actor=connor, organization=acme, name="ci-runner")
        html = client_as(sarah).get("/home/security/").content.decode()
        assert "ci-runner" in html and "connor" in html
        assert secret not in html and token.key_hash not in html

    def test_security_home_lists_expiring_roles(self, client_as, sam, sarah, vera):
        import datetime

        from django.utils import timezone

        membership = Membership.objects.for_user(sam).get(user=vera)
        services.membership_update(
            actor=sam, membership=membership, expires_at=timezone.now() + datetime.timedelta(days=3)
        )
        response = client_as(sarah).get("/home/security/")
        assert [m.user.username for m in response.context["expiring"]] == ["vera"]

    def test_consumer_home_shows_own_tokens_and_notifications(self, client_as, connor, sam, acme):
        services.token_create(actor=connor, organization=acme, name="my-script")
        services.token_create(actor=sam, organization=acme, name="sams-token")
        services.notification_send(recipient=connor, organization_id=acme.pk, text="Your lease ends tomorrow")
        html = client_as(connor).get("/home/consumer/").content.decode()
        assert "my-script" in html and "sams-token" not in html
        assert "Your lease ends tomorrow" in html


@pytest.mark.django_db
class TestSwitchers:
    def test_mallory_cannot_switch_to_acme(self, client_as, mallory, acme, globex):
        client = client_as(mallory)
        before = dict(client.session)
        response = client.post("/org/switch/", {"organization": acme.pk})
        assert response.status_code == 404
        assert dict(client.session) == before
        assert client.session.get("org_id") in (None, globex.pk)
        assert client.post("/org/switch/", {"organization": "not-a-number"}).status_code == 404

    def test_switch_needs_post(self, client_as, sam, acme):
        assert client_as(sam).get("/org/switch/").status_code == 405

    def test_member_of_two_orgs_switches(self, client_as, sam, acme, globex):
        services.membership_create(actor=None, user=sam, organization=globex, role="manager")
        client = client_as(sam)
        assert client.get("/")["Location"] == "/home/sysadmin/"
        response = client.post("/org/switch/", {"organization": globex.pk})
        assert response.status_code == 302
        assert client.session["org_id"] == globex.pk
        assert client.get("/")["Location"] == "/home/infrastructure/"
        # pages follow the current organisation
        html = client.get("/org/members/").content.decode()
        assert "mallory" in html and "connor" not in html

    def test_project_context(self, client_as, connor, vera, web, data):
        client = client_as(connor)
        response = client.post("/project/switch/", {"project": web.pk, "next": "/org/members/"})
        assert response["Location"] == "/org/members/"
        assert client.session["project_id"] == web.pk
        html = client.get("/org/members/").content.decode()
        assert "organisation roles and members of\n      Web" in html
        client.post("/project/switch/", {"project": ""})
        assert "project_id" not in client.session

        outsider = client_as(vera)  # vera is in web only
        assert outsider.post("/project/switch/", {"project": data.pk}).status_code == 404
        assert "project_id" not in outsider.session

    def test_project_switch_ignores_an_external_next(self, client_as, connor, web):
        response = client_as(connor).post(
            "/project/switch/", {"project": web.pk, "next": "https://evil.example/"}
        )
        assert response["Location"] == "/"


@pytest.mark.django_db
def test_frame_has_the_live_hooks_and_csrf_for_htmx(client_as, connor, acme):
    services.notification_send(recipient=connor, organization_id=acme.pk, text="hello")
    html = client_as(connor).get("/home/consumer/").content.decode()
    assert '<div id="notifications-live" data-ws-url="/ws/notifications/"' in html
    assert re.search(r'<span id="unread-count"[^>]*>1</span>', html)
    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"[A-Za-z0-9]+\"\}'", html)
    assert "navbar-toggler" in html and 'aria-controls="main-nav"' in html
