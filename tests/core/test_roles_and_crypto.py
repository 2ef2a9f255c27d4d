from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from apps.core import crypto
from apps.core.roles import ACTIONS, ORG_ROLES, PROJECT_ROLES, Role, actions_for, render_markdown, role_allows


def test_roles_doc_is_generated_from_the_table():
    assert (Path(settings.BASE_DIR) / "docs" / "roles.md").read_text() == render_markdown()
    call_command("roles_doc", "--check")


def test_org_role_promises_hold():
    # admin does everything; manager and security read everything but never launch
    assert actions_for(Role.ADMIN) == frozenset(ACTIONS)
    for role in (Role.MANAGER, Role.SECURITY):
        assert not role_allows(role, "deployments.launch")
        assert all(role_allows(role, a) for a in ACTIONS if a.endswith(".view") and a != "members.manage")
    assert role_allows(Role.MANAGER, "budgets.manage") and not role_allows(Role.SECURITY, "budgets.manage")
    assert role_allows(Role.SECURITY, "images.approve") and not role_allows(Role.MANAGER, "images.approve")
    assert role_allows(Role.SECURITY, "audit.export") and role_allows(Role.SECURITY, "grants.manage")


def test_viewer_only_reads():
    assert all(a.endswith(".view") for a in actions_for(Role.VIEWER))


def test_project_roles():
    assert role_allows(Role.DESIGNER, "images.manage") and role_allows(Role.DESIGNER, "deployments.launch")
    assert role_allows(Role.MEMBER, "deployments.launch") and not role_allows(Role.MEMBER, "images.manage")
    assert ORG_ROLES.isdisjoint(PROJECT_ROLES) and set(Role) == ORG_ROLES | PROJECT_ROLES


def test_unknown_action_is_a_programming_error():
    with pytest.raises(KeyError, match="unknown action"):
        role_allows(Role.ADMIN, "deployments.lauch")


def test_fernet_round_trip_and_rotation(settings):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SKYPORT_FERNET_KEYS = [old]
    token = crypto.encrypt("s3cret")
    assert "s3cret" not in token and crypto.decrypt(token) == "s3cret"
    settings.SKYPORT_FERNET_KEYS = [new, old]
    rotated = crypto.rotate(token)
    settings.SKYPORT_FERNET_KEYS = [new]
    assert crypto.decrypt(rotated) == "s3cret"
    with pytest.raises(crypto.DecryptionError, match="SKYPORT_FERNET_KEYS"):
        crypto.decrypt(token)


def test_local_key_file_is_written_once_with_private_mode(tmp_path, settings):
    import stat

    from cryptography.fernet import Fernet

    settings.SKYPORT_FERNET_KEYS_FILE = tmp_path / "var" / "fernet.keys"
    call_command("generate_fernet_key", "--write")
    key = settings.SKYPORT_FERNET_KEYS_FILE.read_text().strip()
    Fernet(key.encode())  # a valid key
    assert stat.S_IMODE(settings.SKYPORT_FERNET_KEYS_FILE.stat().st_mode) == 0o600
    call_command("generate_fernet_key", "--write")
    assert settings.SKYPORT_FERNET_KEYS_FILE.read_text().strip() == key  # never replaced: data would be lost
