"""The launch pipeline end to end on the sim clouds with Celery eager: request → hooks → create operations →
running, with transitions recorded; idempotency keys; multi-server blueprints in dependency order with outputs;
partial failure with retry and cancel; delete leaves nothing at the provider; bad input changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied

from apps.clouds.models import Operation
from apps.clouds.sim.models import SimFirewall, SimPublicIP, SimServer
from apps.clouds.sim.services import sim_fault_add, sim_faults_clear
from apps.core.permissions import ServiceError
from apps.deployments import services
from apps.deployments.models import Deployment, Instance, InstanceTransition, QuotaReservation
from tests.deployments.conftest import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def launch(actor, project, item, name, django_capture_on_commit_callbacks, **kwargs):
    with django_capture_on_commit_callbacks(execute=True):
        deployment, created = services.deployment_request(actor=actor, project=project, item=item, name=name,
                                                          **kwargs)
    deployment.refresh_from_db()
    return deployment, created


def live_servers(tag_deployment: int | None = None):
    servers = SimServer.objects.exclude(state="deleted")
    if tag_deployment is not None:
        servers = [s for s in servers if s.tags.get("skyport:deployment") == str(tag_deployment)]
    return list(servers)


def test_launch_to_running_records_every_transition(connor, web, launch_world, settle,
                                                    django_capture_on_commit_callbacks):
    item = launch_world["items"]["debian-12-server"]
    deployment, created = launch(connor, web, item, "build-box", django_capture_on_commit_callbacks)
    assert created and deployment.state == "provisioning"
    [instance] = deployment.instances.all()
    assert instance.name == "build-box" and instance.state == "building" and instance.size == "small"
    # cheapest: sim-west is the cheaper account
    assert instance.account.slug == "sim-west"
    chosen = deployment.placement["servers"]["server"]["chosen"][0]
    assert chosen["where"] == "sim-west/west-1" and "cheapest" in chosen["reason"]
    settle()
    deployment.refresh_from_db()
    instance.refresh_from_db()
    assert deployment.state == "active" and instance.state == "running"
    assert instance.provider_server_id and instance.private_ips and instance.public_ips
    server = SimServer.objects.get(server_id=instance.provider_server_id)
    assert server.tags["skyport:deployment"] == str(deployment.pk) and server.tags["skyport:operation"]
    moves = list(InstanceTransition.objects.all_tenants().filter(instance=instance).values_list(
        "from_state", "to_state", "cause", "owner__username", "size", "vcpus"))
    assert moves == [("pending", "building", "launch", "connor", "small", instance.vcpus),
                     ("building", "running", "operation", "connor", "small", instance.vcpus)]
    held = QuotaReservation.objects.all_tenants().get(deployment=deployment)
    assert (held.instances, held.vcpus, held.released_at) == (1, instance.vcpus, None)
    assert deployment.sequence >= 3  # requested, building, running (each a numbered event)


def test_a_retried_request_with_the_same_key_returns_the_first_deployment(
        connor, web, launch_world, django_capture_on_commit_callbacks):
    item = launch_world["items"]["debian-12-server"]
    first, created = launch(connor, web, item, "keyed", django_capture_on_commit_callbacks, idempotency_key="k-1")
    again, created_again = launch(connor, web, item, "keyed", django_capture_on_commit_callbacks,
                                  idempotency_key="k-1")
    assert created and not created_again and again.pk == first.pk
    assert Deployment.objects.all_tenants().filter(name="keyed").count() == 1
    assert Operation.objects.all_tenants().filter(kind="create_server").count() == 1
    assert QuotaReservation.objects.all_tenants().filter(deployment=first).count() == 1


def test_two_tier_blueprint_creates_in_dependency_order_with_outputs(
        connor, web, launch_world, settle, django_capture_on_commit_callbacks):
    item = launch_world["items"]["two-tier-web-application"]
    deployment, _ = launch(connor, web, item, "shop", django_capture_on_commit_callbacks,
                           parameters={"web_count": "2"})
    names = dict(deployment.instances.values_list("name", "state"))
    # the web servers wait for the database
    assert names == {"shop-db-1": "building", "shop-web-1": "pending", "shop-web-2": "pending"}
    settle()
    instances = {i.name: i for i in deployment.instances.all()}
    assert {i.state for i in instances.values()} == {"running"}
    # spread: the two web servers are on different accounts
    assert instances["shop-web-1"].account_id != instances["shop-web-2"].account_id
    db_ip = instances["shop-db-1"].private_ips[0]
    web_server = SimServer.objects.get(server_id=instances["shop-web-1"].provider_server_id)
    assert f"content: \"{db_ip}\"" in web_server.user_data
    # each role's ports, opened by a firewall of its own (one per account-region it runs in)
    db_server = SimServer.objects.get(server_id=instances["shop-db-1"].provider_server_id)
    db_rules = SimFirewall.objects.get(firewall_id=db_server.firewall_id).rules
    assert db_rules == [{"port": 5432, "cidr": "10.0.0.0/8", "protocol": "tcp"}]
    assert [r["port"] for r in SimFirewall.objects.get(firewall_id=web_server.firewall_id).rules] == [80, 443]
    deployment.refresh_from_db()
    assert deployment.state == "active"


def test_delete_removes_servers_and_addresses_and_gives_the_quota_back(
        connor, web, launch_world, settle, django_capture_on_commit_callbacks):
    item = launch_world["items"]["debian-12-server"]
    deployment, _ = launch(connor, web, item, "short-lived", django_capture_on_commit_callbacks)
    settle()
    [server] = live_servers(deployment.pk)
    # port 22 opened by the deployment's own firewall
    firewall = SimFirewall.objects.get(firewall_id=server.firewall_id)
    assert firewall.rules == [{"port": 22, "cidr": "0.0.0.0/0", "protocol": "tcp"}]
    assert firewall.name.endswith(f"-d{deployment.pk}-server")
    with django_capture_on_commit_callbacks(execute=True):
        services.deployment_delete(actor=connor, deployment=deployment)
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "deleted"
    assert live_servers(deployment.pk) == []
    assert not SimPublicIP.objects.filter(released=False).exists()
    assert not SimFirewall.objects.exists()
    assert QuotaReservation.objects.all_tenants().get(deployment=deployment).released_at is not None


def test_partial_failure_then_retry_then_cancel(connor, web, launch_world, settle,
                                                django_capture_on_commit_callbacks):
    item = launch_world["items"]["two-tier-web-application"]
    west = launch_world["accounts"]["sim-west"]
    # the second server created on sim-west fails for good
    sim_fault_add(west.endpoint, kind="error", method="create_server", error="invalid", on_call=2,
                  message="No valid host was found.")
    deployment, _ = launch(connor, web, item, "flaky", django_capture_on_commit_callbacks)
    settle()
    deployment.refresh_from_db()
    states = dict(deployment.instances.values_list("name", "state"))
    assert deployment.state == "partially_failed", states
    failed = deployment.instances.get(state="error")
    assert "No valid host" in failed.error
    sim_faults_clear(west.endpoint)
    with django_capture_on_commit_callbacks(execute=True):
        retried = services.deployment_retry_failed(actor=connor, deployment=deployment)
    assert [i.pk for i in retried] == [failed.pk]
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "active"
    assert len(live_servers(deployment.pk)) == 3
    # cancel is for launches in progress; an active one is deleted instead
    with pytest.raises(ServiceError, match="Delete it instead"):
        services.deployment_cancel(actor=connor, deployment=deployment)


def test_cancel_during_provisioning_stops_work_and_cleans_up(connor, web, launch_world, settle,
                                                             django_capture_on_commit_callbacks):
    item = launch_world["items"]["two-tier-web-application"]
    deployment, _ = launch(connor, web, item, "halfway", django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.deployment_cancel(actor=connor, deployment=deployment)
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "deleted" and "Cancelled by connor" in deployment.state_message
    assert live_servers(deployment.pk) == []
    assert set(deployment.instances.values_list("state", flat=True)) == {"deleted"}
    assert QuotaReservation.objects.all_tenants().get(deployment=deployment).released_at is not None


def test_ordered_policy_falls_back_on_a_provider_error(connor, web, launch_world, settle,
                                                      django_capture_on_commit_callbacks):
    item = launch_world["items"]["debian-12-server"]
    west = launch_world["accounts"]["sim-west"]
    sim_fault_add(west.endpoint, kind="error", method="create_server", error="capacity", times=10,
                  message="Insufficient capacity.")
    deployment, _ = launch(connor, web, item, "fallback", django_capture_on_commit_callbacks, policy="ordered")
    settle(rounds=200)
    deployment.refresh_from_db()
    [instance] = deployment.instances.all()
    assert instance.state == "running" and instance.account.slug == "sim-east"
    [moved] = deployment.placement["fallbacks"]
    assert moved["from"].startswith("sim-west/") and moved["to"].startswith("sim-east/")


@pytest.mark.parametrize("kwargs, field, message", [
    ({"name": "Bad Name"}, "name", "lowercase"),
    ({"parameters": {"web_count": "many"}}, "parameters", "web_count"),
    ({"parameters": {"nope": 1}}, "parameters", "Unknown parameter"),
    ({"size": "huge"}, "size", "Unknown size"),
    ({"policy": "random"}, "policy", "Unknown placement policy"),
    ({"lease_days": "soon"}, "lease_days", "whole number"),
    ({"ssh_key": "missing"}, "ssh_key", "No such SSH key"),
])
def test_bad_input_is_refused_and_nothing_is_written(connor, web, launch_world, kwargs, field, message,
                                                     django_capture_on_commit_callbacks):
    items = launch_world["items"]
    item = items["two-tier-web-application"] if "parameters" in kwargs else items["debian-12-server"]
    calls_before = sum(s.calls for s in __import__("apps.clouds.sim.models", fromlist=["SimCloud"]).SimCloud
                       .objects.all())
    args = {"name": "fine", **kwargs}
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ServiceError) as error:
        services.deployment_request(actor=connor, project=web, item=item, **args)
    assert field in error.value.message_dict and message in " ".join(error.value.message_dict[field])
    assert not Deployment.objects.all_tenants().exists()
    assert not QuotaReservation.objects.all_tenants().exists()
    assert not Operation.objects.all_tenants().filter(kind="create_server").exists()
    from apps.clouds.sim.models import SimCloud

    assert sum(s.calls for s in SimCloud.objects.all()) == calls_before


def test_quota_too_small_for_the_size_refuses_and_reserves_nothing(connor, sam, web, acme, launch_world,
                                                                   django_capture_on_commit_callbacks):
    from apps.deployments.models import Quota

    Quota.objects.create(organization=acme, project=web, max_vcpus=1)
    with pytest.raises(ServiceError) as error:
        services.deployment_request(actor=connor, project=web, item=launch_world["items"]["debian-12-server"],
                                    name="too-big", size="large")
    assert "vCPU quota of project" in " ".join(error.value.message_dict["size"])
    assert not Deployment.objects.all_tenants().exists() and not QuotaReservation.objects.all_tenants().exists()


def test_a_viewer_cannot_launch_and_an_item_not_published_to_the_project_is_refused(
        vera, connor, web, data, launch_world):
    items = launch_world["items"]
    with pytest.raises(PermissionDenied):
        services.deployment_request(actor=vera, project=web, item=items["debian-12-server"], name="nope")
    with pytest.raises(ServiceError) as error:
        services.deployment_request(actor=connor, project=web, item=items["ubuntu-2404-server"], name="nope")
    assert "not published" in " ".join(error.value.message_dict["catalog_item"])
    assert not Deployment.objects.all_tenants().exists()


def test_approval_flow(connor, sam, marty, web, launch_world, settle, django_capture_on_commit_callbacks):
    from apps.deployments.models import Approval

    item = launch_world["items"]["debian-12-server"]
    item.approval_threshold_monthly = Decimal("0.01")
    item.save()
    deployment, _ = launch(connor, web, item, "needs-ok", django_capture_on_commit_callbacks)
    assert deployment.state == "pending_approval"
    assert not Operation.objects.all_tenants().filter(kind="create_server").exists()
    approval = Approval.objects.all_tenants().get(deployment=deployment)
    assert "over the $0.01 threshold" in approval.reason
    with pytest.raises(PermissionDenied):  # not an approver
        services.approval_decide(actor=connor, approval=approval, approve=True)
    with pytest.raises(ServiceError, match="Say why"):
        services.approval_decide(actor=sam, approval=approval, approve=False)
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(actor=sam, approval=approval, approve=True, comment="ok")
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "active"


def test_nobody_approves_their_own_request_and_requests_expire(sam, web, launch_world,
                                                              django_capture_on_commit_callbacks):
    import datetime

    from django.utils import timezone

    from apps.deployments.models import Approval

    item = launch_world["items"]["debian-12-server"]
    item.approval_threshold_monthly = Decimal("0")
    item.save()
    deployment, _ = launch(sam, web, item, "self-approved", django_capture_on_commit_callbacks)
    approval = Approval.objects.all_tenants().get(deployment=deployment)
    with pytest.raises(PermissionDenied, match="their own"):
        services.approval_decide(actor=sam, approval=approval, approve=True)
    assert services.approvals_expire(now=timezone.now() + datetime.timedelta(hours=49)) == 1
    deployment.refresh_from_db()
    approval.refresh_from_db()
    assert (deployment.state, approval.state) == ("rejected", "expired")
    assert QuotaReservation.objects.all_tenants().get(deployment=deployment).released_at is not None
    assert set(Instance.objects.all_tenants().filter(deployment=deployment).values_list("state", flat=True)) == {
        "deleted"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=SIM_DATABASES)
def test_concurrent_launch_requests_against_a_quota_are_exact_and_balance_after_cancels(connor, acme, web,
                                                                                        launch_world):
    from django.db import connection

    from apps.deployments.models import Quota
    from tests.postgres.test_concurrency import race

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises every writer")
    item = launch_world["items"]["debian-12-server"]
    item.approval_threshold_monthly = Decimal("0")  # every request waits for an approval: no provider call
    item.save()
    Quota.objects.create(organization=acme, project=web, max_instances=5)

    def request(i):
        return services.deployment_request(actor=connor, project=web, item=item, name=f"race-{i}")[0]

    made, errors = race(20, request)
    assert len(made) == 5 and len(errors) == 15
    assert all("instances quota of project Web" in " ".join(e.messages) for e in errors)

    def held():
        return QuotaReservation.objects.all_tenants().filter(released_at__isnull=True).count()

    assert held() == 5
    for deployment in made[:2]:
        services.deployment_cancel(actor=connor, deployment=deployment)
    assert held() == 3
    made, errors = race(6, lambda i: request(100 + i))
    assert (len(made), len(errors), held()) == (2, 4, 5)
    assert not Operation.objects.all_tenants().filter(kind="create_server").exists()
