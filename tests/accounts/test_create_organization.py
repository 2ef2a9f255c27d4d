"""The bootstrap command: an organisation with its first admin, who can then sign in; bad input changes nothing."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import Membership, Organization, User

pytestmark = pytest.mark.django_db


def test_creates_the_organisation_and_its_admin(client, monkeypatch):
    monkeypatch.setenv("SKYPORT_ADMIN_PASSWORD", "a-long-and-unusual-passphrase-42")
    call_command("create_organization", name="Initech", slug="initech", admin="peter", email="peter@initech.example")
    org = Organization.objects.all_tenants().get(slug="initech")
    peter = User.objects.get(username="peter")
    assert Membership.objects.all_tenants().filter(user=peter, organization=org, role="admin").exists()
    assert client.login(username="peter", password="a-long-and-unusual-passphrase-42")


def test_bad_input_changes_nothing(monkeypatch, sam):
    monkeypatch.setenv("SKYPORT_ADMIN_PASSWORD", "short")
    before = (User.objects.count(), Organization.objects.all_tenants().count())
    with pytest.raises(CommandError, match="password is refused"):
        call_command("create_organization", name="X", slug="x", admin="newbie", email="n@x.example")
    with pytest.raises(CommandError, match="give --email"):
        call_command("create_organization", name="X", slug="x", admin="nobody")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_organization", name="Acme again", slug="acme", admin="sam")
    assert (User.objects.count(), Organization.objects.all_tenants().count()) == before
