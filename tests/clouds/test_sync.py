"""Catalogue sync: upserts per account-region, marks dropped rows inactive, keeps the last good data on failure."""

from __future__ import annotations

import pytest

from apps.clouds import services
from apps.clouds.models import CloudAccount, CloudImage, Flavor, Health, Network
from tests.clouds.accounts_world import DBS, connect

pytestmark = pytest.mark.django_db(databases=DBS)


def test_sync_fills_the_catalogue_per_region(sam, acme):
    account = connect(sam, acme, "cat")
    result = services.sync_account(account=account)
    assert result.ok
    flavors = Flavor.objects.all_tenants().filter(account=account)
    assert {f.region for f in flavors} == {"region-1", "region-2"}
    assert flavors.filter(region="region-1").count() == 4
    small = flavors.get(region="region-1", provider_id="small")
    assert (small.vcpus, small.ram_mb) == (1, 2048) and small.provider_price_per_hour is not None
    assert CloudImage.objects.all_tenants().filter(account=account, region="region-1").count() == 4
    assert Network.objects.all_tenants().filter(account=account, region="region-1").count() == 2
    account.refresh_from_db()
    assert account.health == Health.OK and account.last_sync_at is not None


def test_image_filters_from_options(sam, acme):
    account = connect(sam, acme, "filtered")
    services.cloud_account_update(actor=sam, account=account, options={"image_name_patterns": ["Ubuntu*"]})
    services.sync_account(account=account)
    names = set(CloudImage.objects.all_tenants().filter(account=account).values_list("name", flat=True))
    assert names == {"Ubuntu 24.04 LTS", "Ubuntu 22.04 LTS"}


def test_dropped_rows_become_inactive_and_come_back(sam, acme):
    from apps.clouds.sim.models import SimCloud

    account = connect(sam, acme, "drops")
    services.sync_account(account=account)
    cloud = SimCloud.objects.get(endpoint=account.endpoint)
    sizes = cloud.sizes
    SimCloud.objects.filter(pk=cloud.pk).update(sizes=[s for s in sizes if s["id"] != "xlarge"])
    services.sync_account(account=account)
    xl = Flavor.objects.all_tenants().filter(account=account, provider_id="xlarge")
    assert xl.count() == 2 and not any(f.is_active for f in xl)
    SimCloud.objects.filter(pk=cloud.pk).update(sizes=sizes)
    services.sync_account(account=account)
    assert all(f.is_active for f in xl.all())


def test_price_override_survives_sync(sam, acme):
    account = connect(sam, acme, "priced")
    services.sync_account(account=account)
    flavor = Flavor.objects.all_tenants().get(account=account, region="region-1", provider_id="small")
    services.flavor_set_price(actor=sam, flavor=flavor, price_per_hour="0.5")
    services.sync_account(account=account)
    flavor.refresh_from_db()
    assert str(flavor.price_per_hour) == "0.50000"


def test_failing_sync_keeps_the_last_good_data_and_says_why(sam, acme):
    from apps.clouds.sim.services import sim_fault_add

    account = connect(sam, acme, "flaky")
    services.sync_account(account=account)
    before = Flavor.objects.all_tenants().filter(account=account, is_active=True).count()
    sim_fault_add(account.endpoint, kind="error", method="list_images", error="transient")
    result = services.sync_account(account=account)
    assert not result.ok
    account.refresh_from_db()
    assert account.health == Health.DEGRADED
    assert account.health_message.startswith("Sync failed")
    assert account.last_failure_at is not None
    assert Flavor.objects.all_tenants().filter(account=account, is_active=True).count() == before


def test_auth_failure_marks_the_account_failing(sam, acme):
    from apps.clouds.sim.models import SimCloud

    account = connect(sam, acme, "revoked-key", api_key="secret-key-5555")
    SimCloud.objects.filter(endpoint=account.endpoint).update(api_key_hash="0" * 64)
    services.sync_account(account=account)
    account.refresh_from_db()
    assert account.health == Health.FAILING
    assert "secret-key" not in account.health_message


def test_tasks_sync_every_active_account(sam, acme):
    from apps.clouds.tasks import sync_all_accounts

    a = connect(sam, acme, "t1")
    b = connect(sam, acme, "t2")
    services.cloud_account_deactivate(actor=sam, account=b)
    assert sync_all_accounts() == CloudAccount.objects.all_tenants().filter(is_active=True).count()
    assert Flavor.objects.all_tenants().filter(account=a).exists()
    assert not Flavor.objects.all_tenants().filter(account=b).exists()
