import re

import pytest

from apps.accounts import services
from apps.accounts.models import ApiToken
from apps.core.models import AuditEvent


def tokens():
    return sorted(ApiToken.objects.all_tenants().values_list("pk", "name", "revoked_at"))


@pytest.mark.django_db
class TestTokensPage:
    def test_secret_is_shown_once(self, client_as, connor, acme):
        client = client_as(connor)
        response = client.post(
            "/tokens/new/", {"name": "laptop cli", "scope": "write", "expires_in_days": 30}
        )
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        html = response.content.decode()
        secret = re.search(r'value="(sky_[A-Za-z0-9_-]+)"', html).group(1)
        assert 'data-copy-target="token-secret"' in html
        token = ApiToken.objects.all_tenants().get()
        assert token.key_hash == ApiToken.hash_secret(secret)
        assert (token.user_id, token.organization_id, token.scope) == (connor.pk, acme.pk, "write")
        # never again: not in the list, not in the audit trail
        listing = client.get("/tokens/").content.decode()
        assert "laptop cli" in listing and secret not in listing
        assert token.key_hash not in listing
        for event in AuditEvent.objects.all_tenants():
            assert secret not in str(event.changes) and secret not in event.object_label

    def test_members_see_only_their_own_reviewers_see_the_org(self, client_as, connor, sam, sarah, acme):
        services.token_create(actor=sam, organization=acme, name="sams-automation")
        services.token_create(actor=connor, organization=acme, name="connors-script")
        assert "sams-automation" not in client_as(connor).get("/tokens/").content.decode()
        html = client_as(sarah).get("/tokens/").content.decode()
        assert "sams-automation" in html and "connors-script" in html

    def test_revoke_own_and_review(self, client_as, connor, sarah, acme):
        mine, _ = services.token_create(actor=connor, organization=acme, name="one")
        theirs, _ = services.token_create(actor=connor, organization=acme, name="two")
        assert client_as(connor).post(f"/tokens/{mine.pk}/revoke/").status_code == 302
        assert client_as(sarah).post(f"/tokens/{theirs.pk}/revoke/").status_code == 302
        assert all(t.revoked_at for t in ApiToken.objects.all_tenants())

    def test_others_cannot_revoke(self, client_as, sam, connor, vera, mallory, acme):
        token, _ = services.token_create(actor=sam, organization=acme, name="sams")
        for outsider in (connor, vera, mallory):
            assert client_as(outsider).post(f"/tokens/{token.pk}/revoke/").status_code == 404
        assert ApiToken.objects.all_tenants().get().revoked_at is None
        assert client_as(connor).get(f"/tokens/{token.pk}/revoke/").status_code == 405

    @pytest.mark.parametrize(
        "form, message",
        [
            ({"name": "", "scope": "read", "expires_in_days": 30}, "This field is required"),
            ({"name": "x", "scope": "admin", "expires_in_days": 30}, "Select a valid choice"),
            ({"name": "x", "scope": "read", "expires_in_days": 0}, "greater than or equal to 1"),
            ({"name": "x", "scope": "read", "expires_in_days": 366}, "less than or equal to 365"),
            ({"name": "x", "scope": "read", "expires_in_days": "soon"}, "Enter a whole number"),
        ],
    )
    def test_bad_input_shows_errors_and_writes_nothing(self, client_as, connor, form, message):
        response = client_as(connor).post("/tokens/new/", form)
        assert response.status_code == 200
        assert message in response.content.decode()
        assert "token-secret" not in response.content.decode()
        assert tokens() == []
