# ruff: noqa: F811 - the fixtures come from test_reconciler and are named as parameters
"""A server resized outside Skyport (in the provider's console) is seen at the next sweep: the instance takes the
new flavor's shape and price, a same-state snapshot charges usage at the new size from then on, the quota held
follows, and open pages hear of it. A resize Skyport itself runs is not mistaken for one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.clouds.models import Flavor, Operation
from apps.clouds.sim.models import SimServer
from apps.deployments.models import InstanceTransition, QuotaReservation
from tests.clouds.fixtures_sim import SIM_DATABASES, _close_sim_connection  # noqa: F401  (PostgreSQL teardown)
from tests.deployments.test_reconciler import (  # noqa: F401  (fixtures)
    EP,
    S,
    _installation,
    account,
    deployment,
    driver,
    fresh,
    legacy,
    make_instance,
    run_sweep,
    running_server,
)

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def _flavor(account, provider_id, vcpus, ram_mb, price):
    return Flavor.objects.create(organization=account.organization, account=account, region="r1",
                                 provider_id=provider_id, name=provider_id, vcpus=vcpus, ram_mb=ram_mb, disk_gb=80,
                                 provider_price_per_hour=Decimal(price))


def _resize_in_the_console(server_id, size_id):
    assert SimServer.objects.using("sim").filter(cloud__endpoint=EP, server_id=server_id).update(size_id=size_id) == 1


def _hold(deployment, **amounts):
    return QuotaReservation.objects.create(organization=deployment.organization, project=deployment.project,
                                           user=deployment.owner, deployment=deployment, **amounts)


def test_an_outside_resize_takes_the_new_shape_and_charges_it_from_then_on(account, driver, deployment,
                                                                         django_capture_on_commit_callbacks):
    _flavor(account, "large", 4, 8192, "0.08000")
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    _hold(deployment, instances=1, vcpus=1, ram_mb=2048, disk_gb=20)
    _resize_in_the_console(server.id, "large")
    sequence = deployment.sequence
    with django_capture_on_commit_callbacks(execute=True):
        run_sweep(account)

    now = fresh(instance)
    assert (now.state, now.flavor_id, now.vcpus, now.ram_mb, now.price_per_hour) == (
        S.RUNNING, "large", 4, 8192, Decimal("0.08000"))
    (row,) = InstanceTransition.objects.all_tenants().filter(instance=instance)
    assert (row.from_state, row.to_state, row.cause) == (S.RUNNING, S.RUNNING, InstanceTransition.Cause.DRIFT)
    assert (row.flavor_id, row.vcpus, row.price_per_hour) == ("large", 4, Decimal("0.08000"))
    assert "from small to large" in row.message
    (held,) = QuotaReservation.objects.all_tenants().filter(deployment=deployment, released_at__isnull=True)
    assert (held.instances, held.vcpus, held.ram_mb) == (1, 4, 8192)
    deployment.refresh_from_db()
    assert deployment.sequence > sequence  # the pages were told

    # the next sweep sees nothing new: no second snapshot
    run_sweep(account)
    assert InstanceTransition.objects.all_tenants().filter(instance=instance).count() == 1


def test_a_flavor_missing_from_the_list_keeps_size_and_price_but_records_the_change(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    _resize_in_the_console(server.id, "xlarge")
    run_sweep(account)
    now = fresh(instance)
    assert (now.flavor_id, now.vcpus, now.ram_mb) == ("xlarge", 1, 2048)
    (row,) = InstanceTransition.objects.all_tenants().filter(instance=instance)
    assert "not in the flavor list" in row.message


def test_a_resize_skyport_runs_is_not_an_outside_one(account, driver, deployment):
    _flavor(account, "large", 4, 8192, "0.08000")
    server = running_server(driver)
    operation = Operation.objects.create(organization=account.organization, account=account, region="r1",
                                         kind="resize_server", idempotency_key="resize-by-skyport",
                                         state=Operation.State.PENDING, params={})
    instance = make_instance(deployment, account, server_id=server.id, operation=operation)
    _resize_in_the_console(server.id, "large")
    run_sweep(account)
    now = fresh(instance)
    assert (now.flavor_id, now.vcpus) == ("small", 1)
    assert not InstanceTransition.objects.all_tenants().filter(instance=instance).exists()


# --- adoption holds quota --------------------------------------------------------------------------------------------
def test_an_adopted_server_is_held_against_the_quotas(legacy, sam, web):
    from apps.deployments.reconciler import unmanaged_adopt

    created = unmanaged_adopt(actor=sam, server=legacy, project=web, name="Legacy DB")
    (held,) = QuotaReservation.objects.all_tenants().filter(deployment=created, released_at__isnull=True)
    assert (held.project_id, held.user_id, held.instances, held.vcpus, held.ram_mb) == (web.pk, sam.pk, 1, 1, 2048)


def test_adoption_over_a_quota_is_refused_and_changes_nothing(legacy, sam, web):
    from apps.core.permissions import ServiceError
    from apps.deployments.models import Deployment, Quota, UnmanagedServer
    from apps.deployments.reconciler import unmanaged_adopt

    # one instance allowed in the project, and one already held there
    Quota.objects.create(organization=web.organization, project=web, max_instances=1)
    _hold(Deployment.objects.all_tenants().get(name="app"), instances=1)
    deployments_before = Deployment.objects.all_tenants().count()
    with pytest.raises(ServiceError) as refused:
        unmanaged_adopt(actor=sam, server=legacy, project=web, name="Legacy DB")
    (message,) = refused.value.message_dict["project"]
    assert "quota" in message and "1 of 1" in message and "Raise the quota" in message
    assert Deployment.objects.all_tenants().count() == deployments_before
    assert UnmanagedServer.objects.all_tenants().filter(pk=legacy.pk).exists()
    assert QuotaReservation.objects.all_tenants().filter(released_at__isnull=True).count() == 1
