"""Cloud account services against a real simulated cloud: the provider check runs before anything is stored,
endpoint changes need the secret again, rotation is audited without it."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from apps.clouds import services
from apps.clouds.models import CloudAccount
from apps.core.models import AuditEvent
from tests.clouds.accounts_world import DBS, connect, make_sim_cloud

pytestmark = pytest.mark.django_db(databases=DBS)


def _count(org) -> int:
    return CloudAccount.objects.all_tenants().filter(organization=org).count()


def test_create_checks_the_credentials_and_stores_them_encrypted(sam, acme):
    account = connect(sam, acme, "prod-sim", api_key="right-key-9876")
    assert account.get_credentials() == {"api_key": "right-key-9876"}
    assert "right-key-9876" not in account.credentials_encrypted
    assert account.credentials_hint == "9876"
    assert len(account.credentials_fingerprint) == 16
    event = AuditEvent.objects.all_tenants().get(verb="cloud_account.create", object_id=str(account.pk))
    assert "right-key" not in str(event.changes)


def test_bad_credentials_store_nothing_and_say_why(sam, acme):
    endpoint = make_sim_cloud(api_key="right-key-9876")
    before, events = _count(acme), AuditEvent.objects.all_tenants().count()
    with pytest.raises(ValidationError) as e:
        services.cloud_account_create(
            actor=sam, organization=acme, name="bad", kind="sim", endpoint=endpoint, regions=["region-1"],
            credentials={"api_key": "wrong-key-1111"},
        )
    assert "rejected the API key" in str(e.value.message_dict["credentials"])
    assert "wrong-key" not in str(e.value)
    assert _count(acme) == before
    assert AuditEvent.objects.all_tenants().count() == events


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "nonsense"}, "kind"),
        ({"regions": ["bad region!"]}, "regions"),
        ({"regions": ["region-9"]}, "regions"),  # the cloud does not offer it
        ({"endpoint": "sim://nobody-here"}, None),  # nobody answers there
        ({"endpoint": "https://10.0.0.1/"}, "endpoint"),
        ({"credentials": {}}, "credentials"),
        ({"credentials": {"api_key": "x" * 10, "other": "y"}}, "credentials"),
        ({"name": "  "}, "name"),
        ({"options": {"password": "x"}}, "options"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(sam, acme, changes, field):
    endpoint = make_sim_cloud(api_key="right-key-9876")
    args = dict(name="x", kind="sim", endpoint=endpoint, regions=["region-1"],
                credentials={"api_key": "right-key-9876"})
    args.update(changes)
    before = _count(acme)
    with pytest.raises(ValidationError) as e:
        services.cloud_account_create(actor=sam, organization=acme, **args)
    if field:
        assert field in e.value.message_dict
    assert _count(acme) == before


def test_only_admins_add_accounts(connor, sarah, acme):
    endpoint = make_sim_cloud()
    for actor in (connor, sarah):
        with pytest.raises(PermissionDenied):
            services.cloud_account_create(actor=actor, organization=acme, name="x", kind="sim", endpoint=endpoint,
                                          regions=["region-1"], credentials={"api_key": "sim-test-key-1234"})
    assert _count(acme) == 0


def test_duplicate_name_is_refused(sam, acme):
    connect(sam, acme, "dup")
    with pytest.raises(ValidationError) as e:
        connect(sam, acme, "dup")
    assert "name" in e.value.message_dict
    assert _count(acme) == 1


def test_changing_the_endpoint_needs_the_secret_again(sam, acme):
    account = connect(sam, acme, "moving", api_key="first-key-1111")
    other = make_sim_cloud(api_key="first-key-1111")
    with pytest.raises(ValidationError) as e:
        services.cloud_account_update(actor=sam, account=account, endpoint=other)
    assert "credentials" in e.value.message_dict
    account.refresh_from_db()
    assert account.endpoint != other
    updated = services.cloud_account_update(actor=sam, account=account, endpoint=other,
                                            credentials={"api_key": "first-key-1111"})
    assert updated.endpoint == other


def test_update_without_endpoint_change_keeps_credentials(sam, acme):
    account = connect(sam, acme, "rename-me")
    fingerprint = account.credentials_fingerprint
    services.cloud_account_update(actor=sam, account=account, name="renamed", regions=["region-1"])
    account.refresh_from_db()
    assert (account.name, account.slug, account.regions) == ("renamed", "renamed", ["region-1"])
    assert account.credentials_fingerprint == fingerprint


def test_rotation_checks_first_and_is_audited_without_the_secret(sam, acme):
    from apps.clouds.sim.models import SimCloud
    from apps.clouds.sim.services import api_key_hash

    account = connect(sam, acme, "rotating", api_key="old-key-aaaa1111")
    old_fp = account.credentials_fingerprint
    with pytest.raises(ValidationError):
        services.cloud_account_rotate_credentials(actor=sam, account=account,
                                                  credentials={"api_key": "new-key-bbbb2222"})
    account.refresh_from_db()
    assert account.credentials_fingerprint == old_fp
    # the provider side rotates the key; then Skyport's copy follows
    SimCloud.objects.filter(endpoint=account.endpoint).update(api_key_hash=api_key_hash("new-key-bbbb2222"))
    services.cloud_account_rotate_credentials(actor=sam, account=account, credentials={"api_key": "new-key-bbbb2222"})
    account.refresh_from_db()
    assert account.get_credentials() == {"api_key": "new-key-bbbb2222"}
    assert account.credentials_hint == "2222"
    event = AuditEvent.objects.all_tenants().get(verb="cloud_account.rotate_credentials")
    text = str(event.changes)
    assert "new-key" not in text and "old-key" not in text
    assert old_fp in text and account.credentials_fingerprint in text


def test_deactivate_is_audited_and_idempotent(sam, acme):
    account = connect(sam, acme, "old")
    services.cloud_account_deactivate(actor=sam, account=account)
    services.cloud_account_deactivate(actor=sam, account=account)
    account.refresh_from_db()
    assert not account.is_active
    assert AuditEvent.objects.all_tenants().filter(verb="cloud_account.deactivate").count() == 1


def test_reencrypt_command_rotates_to_the_newest_key(sam, acme, settings):
    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key = Fernet.generate_key().decode()
    settings.SKYPORT_FERNET_KEYS = [old_key]
    account = connect(sam, acme, "keyed", api_key="keep-me-12345678")
    from apps.core import crypto
    from apps.deployments.hooks import hook_create

    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    hook = hook_create(actor=sam, organization=acme, name="rotated", url="http://127.0.0.1:9/h",
                       phase="after_launch", secret="hook-secret-0123456789")
    new_key = Fernet.generate_key().decode()
    settings.SKYPORT_FERNET_KEYS = [new_key, old_key]
    call_command("reencrypt_credentials")
    settings.SKYPORT_FERNET_KEYS = [new_key]
    account.refresh_from_db()
    hook.refresh_from_db()
    assert account.get_credentials() == {"api_key": "keep-me-12345678"}
    assert crypto.decrypt(hook.secret_encrypted) == "hook-secret-0123456789"  # readable with the new key alone
