import pytest

from apps.accounts import services
from apps.accounts.models import Notification


@pytest.mark.django_db
def test_inviter_is_notified_when_the_invitation_is_accepted(sam, acme, web, django_capture_on_commit_callbacks):
    invitation, secret = services.invitation_create(
        actor=sam, organization=acme, project=web, email="newbie@acme.example", role="member"
    )
    assert not Notification.objects.for_user(sam).exists()
    user = services.user_sign_up_from_invitation(
        secret=secret, username="newbie", password="a-long-passphrase-9", full_name="New Bie"
    )
    note = Notification.objects.for_user(sam).get()
    assert "New Bie accepted your invitation and joined Web as member" in note.text
    assert note.link == "/org/members/"
    assert not Notification.objects.for_user(user).exists()
