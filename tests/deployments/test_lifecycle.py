"""Lifecycle on the sim clouds: start, stop, reboot, resize (EC2-like stop → resize → start), delete, single and
for a whole deployment; a busy or wrong-state server is refused with nothing changed; leases remind, then stop or
delete; transfer records a snapshot for the new owner; the console answers; launching twice is harmless."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from apps.accounts.models import Notification
from apps.clouds.models import Operation
from apps.clouds.sim.models import SimServer
from apps.core.permissions import ServiceError
from apps.deployments import services
from apps.deployments.models import Deployment, InstanceTransition, QuotaReservation
from tests.deployments.conftest import SIM_DATABASES
from tests.deployments.test_launch import launch

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


@pytest.fixture
def running(connor, web, launch_world, settle, django_capture_on_commit_callbacks):
    deployment, _ = launch(connor, web, launch_world["items"]["debian-12-server"], "box",
                           django_capture_on_commit_callbacks)
    settle()
    [instance] = deployment.instances.all()
    assert instance.state == "running"
    return deployment, instance


def act(django_capture_on_commit_callbacks, fn, **kwargs):
    with django_capture_on_commit_callbacks(execute=True):
        return fn(**kwargs)


def test_stop_start_reboot(connor, running, settle, django_capture_on_commit_callbacks):
    deployment, instance = running
    act(django_capture_on_commit_callbacks, services.instance_action, actor=connor, instance=instance, action="stop")
    instance.refresh_from_db()
    assert instance.state == "stopping"
    # busy: a second action waits for the first, nothing changes
    with pytest.raises(ServiceError, match="busy"):
        services.instance_action(actor=connor, instance=instance, action="start")
    settle()
    instance.refresh_from_db()
    assert instance.state == "stopped"
    assert SimServer.objects.get(server_id=instance.provider_server_id).state == "stopped"
    with pytest.raises(ServiceError, match="needs a running server"):
        services.instance_action(actor=connor, instance=instance, action="reboot")
    act(django_capture_on_commit_callbacks, services.deployment_action, actor=connor, deployment=deployment,
        action="start")
    settle()
    act(django_capture_on_commit_callbacks, services.instance_action, actor=connor, instance=instance,
        action="reboot")
    settle()
    instance.refresh_from_db()
    assert instance.state == "running"
    moves = list(InstanceTransition.objects.all_tenants().filter(instance=instance).values_list("to_state",
                                                                                                flat=True))
    assert moves == ["building", "running", "stopping", "stopped", "starting", "running", "rebooting", "running"]


def test_resize_changes_the_size_and_the_snapshot_and_reserves_the_difference(
        connor, running, settle, django_capture_on_commit_callbacks):
    deployment, instance = running
    before = instance.vcpus
    act(django_capture_on_commit_callbacks, services.instance_action, actor=connor, instance=instance,
        action="resize", size="medium")
    settle()
    instance.refresh_from_db()
    assert (instance.state, instance.size) == ("running", "medium") and instance.vcpus > before
    assert SimServer.objects.get(server_id=instance.provider_server_id).size_id == instance.flavor_id
    last = InstanceTransition.objects.all_tenants().filter(instance=instance).last()
    assert (last.from_state, last.to_state, last.size, last.vcpus) == ("resizing", "running", "medium",
                                                                       instance.vcpus)
    held = QuotaReservation.objects.all_tenants().filter(deployment=deployment, released_at__isnull=True)
    assert sum(r.vcpus for r in held) == instance.vcpus
    with pytest.raises(ServiceError, match="already has size medium"):
        services.instance_action(actor=connor, instance=instance, action="resize", size="medium")


def test_viewer_cannot_operate(vera, running):
    from django.core.exceptions import PermissionDenied

    deployment, instance = running
    with pytest.raises(PermissionDenied):
        services.instance_action(actor=vera, instance=instance, action="stop")
    assert not Operation.objects.all_tenants().filter(kind="stop_server").exists()


def test_lease_reminds_then_stops(connor, running, settle, django_capture_on_commit_callbacks):
    deployment, instance = running
    now = timezone.now()
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(
        lease_expires_at=now + datetime.timedelta(hours=2), lease_action="stop")
    counts = act(django_capture_on_commit_callbacks, services.leases_enforce, now=now)
    assert counts["reminded"] == 1
    assert Notification.objects.all_tenants().filter(recipient=connor, text__contains="lease of box").exists()
    assert act(django_capture_on_commit_callbacks, services.leases_enforce, now=now)["reminded"] == 0  # once
    later = now + datetime.timedelta(hours=3)
    assert act(django_capture_on_commit_callbacks, services.leases_enforce, now=later)["stopped"] == 1
    settle()
    instance.refresh_from_db()
    assert instance.state == "stopped"
    assert InstanceTransition.objects.all_tenants().filter(instance=instance, cause="lease").exists()
    assert act(django_capture_on_commit_callbacks, services.leases_enforce, now=later)["stopped"] == 0
    # extending sets a new end and the action again
    act(django_capture_on_commit_callbacks, services.deployment_extend, actor=connor, deployment=deployment, days=3)
    deployment.refresh_from_db()
    assert deployment.lease_action == "stop" and deployment.lease_expires_at > later


def test_lease_delete_at_expiry(connor, running, settle, django_capture_on_commit_callbacks):
    deployment, instance = running
    Deployment.objects.all_tenants().filter(pk=deployment.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=1), lease_action="delete")
    assert act(django_capture_on_commit_callbacks, services.leases_enforce)["deleted"] == 1
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "deleted"
    assert SimServer.objects.get(server_id=instance.provider_server_id).state == "deleted"


def test_a_lease_longer_than_the_item_allows_is_refused(connor, web, launch_world):
    item = launch_world["items"]["debian-12-server"]
    item.lease_days, item.lease_max_days = 7, 30
    item.save()
    with pytest.raises(ServiceError, match="at most 30 days"):
        services.deployment_request(actor=connor, project=web, item=item, name="long", lease_days=31)
    assert not Deployment.objects.all_tenants().exists()


def test_transfer_records_a_snapshot_for_the_new_owner(connor, dennis, vera, running):
    deployment, instance = running
    with pytest.raises(ServiceError, match="cannot launch"):
        services.deployment_transfer(actor=connor, deployment=deployment, new_owner=vera)
    services.deployment_transfer(actor=connor, deployment=deployment, new_owner=dennis)
    instance.refresh_from_db()
    deployment.refresh_from_db()
    assert deployment.owner == dennis and instance.owner == dennis
    last = InstanceTransition.objects.all_tenants().filter(instance=instance).last()
    assert (last.cause, last.from_state, last.to_state, last.owner) == ("transfer", "running", "running", dennis)


def test_console_shows_the_sim_console_output(connor, running):
    deployment, instance = running
    console = services.instance_console(actor=connor, instance=instance)
    assert console.kind == "log" and instance.name in console.output


def test_launching_twice_creates_one_server(connor, web, launch_world, settle, django_capture_on_commit_callbacks):
    from apps.deployments.tasks import deployment_launch_task

    deployment, _ = launch(connor, web, launch_world["items"]["debian-12-server"], "twice",
                           django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        deployment_launch_task(deployment.pk)  # a redelivered task
        services.deployment_advance(deployment.pk)
    settle()
    assert Operation.objects.all_tenants().filter(kind="create_server").count() == 1
    servers = [s for s in SimServer.objects.all() if s.tags.get("skyport:deployment") == str(deployment.pk)]
    assert len(servers) == 1


def test_resizing_a_stopped_server_keeps_it_stopped(connor, running, settle, django_capture_on_commit_callbacks):
    deployment, instance = running
    act(django_capture_on_commit_callbacks, services.instance_action, actor=connor, instance=instance, action="stop")
    settle()
    act(django_capture_on_commit_callbacks, services.instance_action, actor=connor, instance=instance,
        action="resize", size="medium")
    op = Operation.objects.all_tenants().filter(kind="resize_server").get()
    assert not any(step in op.steps for step in ("resize:stop", "resize:start"))
    settle()
    instance.refresh_from_db()
    assert (instance.state, instance.size) == ("stopped", "medium")
    assert SimServer.objects.get(server_id=instance.provider_server_id).state == "stopped"


def test_a_member_operates_only_their_own_deployments(connor, dennis, sam, running, settle,
                                                      django_capture_on_commit_callbacks):
    from django.core.exceptions import PermissionDenied
    from guardian.shortcuts import assign_perm

    deployment, instance = running
    with pytest.raises(PermissionDenied, match="only your own"):  # dennis: designer in web, not the owner
        services.instance_action(actor=dennis, instance=instance, action="stop")
    assert not Operation.objects.all_tenants().filter(kind="stop_server").exists()
    assign_perm("deployments.operate_deployment", dennis, deployment)  # an explicit grant
    act(django_capture_on_commit_callbacks, services.instance_action, actor=dennis, instance=instance,
        action="stop")
    settle()
    act(django_capture_on_commit_callbacks, services.instance_action, actor=sam, instance=instance,
        action="start")  # an org admin operates anyone's
    settle()
    instance.refresh_from_db()
    assert instance.state == "running"
