import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher

from apps.accounts.demo import DEMO_PASSWORD
from apps.accounts.models import User

LOGIN = "/accounts/login/"


@pytest.fixture
def password_checks(monkeypatch):
    """Counts real password verifications (the hasher still runs)."""
    calls = []
    original = MD5PasswordHasher.verify

    def counting(self, password, encoded):
        calls.append(1)
        return original(self, password, encoded)

    monkeypatch.setattr(MD5PasswordHasher, "verify", counting)
    return calls


def signed_in_as(client):
    return client.session.get("_auth_user_id")


@pytest.mark.django_db
class TestLogin:
    def test_username_or_email_signs_in(self, client_as, sam):
        for login in ("sam", "SAM@acme.example"):
            client = client_as()
            response = client.post(LOGIN, {"login": login, "password": DEMO_PASSWORD})
            assert response.status_code == 302
            assert response["Location"] == "/"
            assert signed_in_as(client) == str(sam.pk)

    def test_wrong_password_is_refused_with_a_form_error(self, client_as, sam):
        client = client_as()
        response = client.post(LOGIN, {"login": "sam", "password": "not-the-password"})
        assert response.status_code == 200
        assert "password is not correct" in response.content.decode()
        assert signed_in_as(client) is None

    def test_eleventh_attempt_is_blocked_even_with_the_right_password(self, client_as, sam, password_checks):
        client = client_as()
        for _ in range(settings.SKYPORT_LOGIN_MAX_FAILURES):
            response = client.post(LOGIN, {"login": "sam", "password": "wrong-guess"})
            assert response.status_code == 200
        assert len(password_checks) == settings.SKYPORT_LOGIN_MAX_FAILURES
        response = client.post(LOGIN, {"login": "sam", "password": DEMO_PASSWORD})
        assert response.status_code == 429
        assert "Too many failed sign-ins" in response.content.decode()
        assert signed_in_as(client) is None
        # refused before any password check
        assert len(password_checks) == settings.SKYPORT_LOGIN_MAX_FAILURES

    def test_success_forgives_earlier_failures(self, client_as, sam):
        client = client_as()
        for _ in range(settings.SKYPORT_LOGIN_MAX_FAILURES - 1):
            client.post(LOGIN, {"login": "sam", "password": "wrong-guess"})
        assert client.post(LOGIN, {"login": "sam", "password": DEMO_PASSWORD}).status_code == 302
        client = client_as()
        for _ in range(settings.SKYPORT_LOGIN_MAX_FAILURES - 1):
            client.post(LOGIN, {"login": "sam", "password": "wrong-guess"})
        # without the earlier forgiveness this would be attempt 20 and blocked
        assert client.post(LOGIN, {"login": "sam", "password": DEMO_PASSWORD}).status_code == 302

    @pytest.mark.parametrize(
        "next_url, expected",
        [
            ("/tokens/", "/tokens/"),
            ("https://evil.example/steal", "/"),
            ("//evil.example/steal", "/"),
            ("http://testserver.evil.example/", "/"),
            ("javascript:alert(1)", "/"),
        ],
    )
    def test_next_is_followed_only_on_this_site(self, client_as, sam, next_url, expected):
        client = client_as()
        response = client.post(LOGIN, {"login": "sam", "password": DEMO_PASSWORD, "next": next_url})
        assert response.status_code == 302
        assert response["Location"] == expected

    def test_login_page_keeps_next_from_the_query_string(self, client_as, personas):
        response = client_as().get(LOGIN + "?next=/audit/")
        assert 'name="next" value="/audit/"' in response.content.decode()

    def test_pages_send_anonymous_visitors_to_sign_in(self, client_as, personas):
        response = client_as().get("/org/members/")
        assert response.status_code == 302
        assert response["Location"] == "/accounts/login/?next=/org/members/"

    def test_logout_needs_post(self, client_as, sam):
        client = client_as(sam)
        assert client.get("/accounts/logout/").status_code == 405
        assert signed_in_as(client) == str(sam.pk)
        response = client.post("/accounts/logout/")
        assert response.status_code == 302
        assert signed_in_as(client) is None


@pytest.mark.django_db
class TestPasswordChange:
    URL = "/accounts/password/"

    def test_change_keeps_this_session_and_ends_the_others(self, client_as, connor):
        other = client_as(connor)
        assert other.get("/tokens/").status_code == 200
        client = client_as(connor)
        response = client.post(
            self.URL,
            {
                "old_password": DEMO_PASSWORD,
                "new_password1": "violet-harbour-crane-81",
                "new_password2": "violet-harbour-crane-81",
            },
        )
        assert response.status_code == 302
        assert client.get("/tokens/").status_code == 200
        assert other.get("/tokens/").status_code == 302  # signed out
        connor.refresh_from_db()
        assert connor.check_password("violet-harbour-crane-81")

    @pytest.mark.parametrize(
        "data, field_text",
        [
            (
                {
                    "old_password": "wrong",
                    "new_password1": "violet-harbour-crane-81",
                    "new_password2": "violet-harbour-crane-81",
                },
                "current password is not correct",
            ),
            (
                {"old_password": DEMO_PASSWORD, "new_password1": "short", "new_password2": "short"},
                "too short",
            ),
            (
                {
                    "old_password": DEMO_PASSWORD,
                    "new_password1": "violet-harbour-crane-81",
                    "new_password2": "violet-harbour-crane-82",
                },
                "passwords differ",
            ),
        ],
    )
    def test_bad_input_shows_errors_and_changes_nothing(self, client_as, connor, data, field_text):
        before = User.objects.get(pk=connor.pk).password
        response = client_as(connor).post(self.URL, data)
        assert response.status_code == 200
        assert field_text in response.content.decode()
        assert User.objects.get(pk=connor.pk).password == before
