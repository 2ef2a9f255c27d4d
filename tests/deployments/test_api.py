"""The deployments REST API on the sim clouds: a launch with an Idempotency-Key answers 201 then 200 with the same
deployment; bad input answers 400 naming the field with nothing reserved and no provider called; the actions reach
the sim; an outsider gets 404 on every Acme object and action and lists without Acme rows, a viewer cannot write;
lists run a constant number of queries; the console answers; operations never show user data or keys; quotas,
hooks (secret write-only), approvals and bulk actions."""

from __future__ import annotations

import http.server
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts import services as accounts
from apps.accounts.models import SshKey
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.sim.models import SimCloud, SimServer
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from apps.deployments import quota_services
from apps.deployments.models import Approval, Deployment, Hook, HookDelivery, Instance, Quota, QuotaReservation
from apps.deployments.quotas import quota_usage
from tests.deployments.conftest import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

API = "/api/v1"
SSH_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApiTestKeyBodyThatMustNeverShow connor@laptop"


def sim_calls() -> int:
    return sum(SimCloud.objects.values_list("calls", flat=True))


def nothing_launched() -> bool:
    return (not Deployment.objects.all_tenants().exists() and not QuotaReservation.objects.all_tenants().exists()
            and not Operation.objects.all_tenants().filter(kind="create_server").exists())


@pytest.fixture
def post(django_capture_on_commit_callbacks):
    """post(client, url, body, **headers): a JSON POST whose on-commit work (tasks, operations) runs."""

    def run(client, url: str, body: dict[str, Any] | None = None, **headers: str):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(url, body or {}, format="json", **headers)

    return run


@pytest.fixture
def launched(api, connor, web, launch_world, post, settle):
    """launched(name, item="debian-12-server", **body) → the deployment's JSON, its servers running."""

    def make(name: str, item: str = "debian-12-server", **body: Any) -> dict[str, Any]:
        response = post(api(connor), f"{API}/deployments/", {"project": web.pk, "catalog_item": item, "name": name,
                                                             **body})
        assert response.status_code == 201, response.content
        settle()
        return api(connor).get(f"{API}/deployments/{response.json()['id']}/").json()

    return make


# --- create ---------------------------------------------------------------------------------------------------
def test_create_answers_201_then_a_retry_with_the_same_key_200_with_the_same_deployment(
        api, connor, web, launch_world, post):
    body = {"project": web.pk, "catalog_item": "debian-12-server", "name": "api-box", "lease_days": 3}
    first = post(api(connor), f"{API}/deployments/", body, HTTP_IDEMPOTENCY_KEY="launch-7f3a")
    assert first.status_code == 201, first.content
    created = first.json()
    assert created["name"] == "api-box" and created["owner"] == "connor" and created["project"] == web.pk
    # answered at once: the launch starts once the request is committed
    assert created["state"] == "requested" and created["policy"] == "cheapest"
    assert created["lease_expires_at"] and created["approval"] is None
    # the placement says where and why, and which clouds were rejected and why
    server = created["placement"]["servers"]["server"]
    assert server["chosen"][0]["where"] == "sim-west/west-1" and "cheapest" in server["chosen"][0]["reason"]
    assert isinstance(server["rejected"], list)
    [instance] = created["instances"]
    assert instance["name"] == "api-box" and instance["account_name"] == "sim-west" and instance["size"] == "small"
    assert Decimal(created["estimated_monthly"]) == (Decimal(created["estimated_hourly"]) * 730).quantize(
        Decimal("0.01"))

    again = post(api(connor), f"{API}/deployments/", body, HTTP_IDEMPOTENCY_KEY="launch-7f3a")
    assert again.status_code == 200 and again.json()["id"] == created["id"]
    assert Deployment.objects.all_tenants().filter(name="api-box").count() == 1
    assert Operation.objects.all_tenants().filter(kind="create_server").count() == 1
    assert QuotaReservation.objects.all_tenants().count() == 1
    assert api(connor).get(f"{API}/deployments/{created['id']}/").json()["state"] == "provisioning"

    # a new key is a new request: the name is taken now
    other = post(api(connor), f"{API}/deployments/", body, HTTP_IDEMPOTENCY_KEY="launch-other")
    assert other.status_code == 400 and "name" in other.json()["error"]["fields"]


def test_create_on_a_chosen_cloud_by_slug(api, connor, web, launch_world, post):
    response = post(api(connor), f"{API}/deployments/", {"project": web.pk, "catalog_item": "debian-12-server",
                                                         "name": "east-box", "cloud": "sim-east"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["policy"] == "account" and body["instances"][0]["account_name"] == "sim-east"
    assert "the cloud you chose" in body["placement"]["servers"]["server"]["chosen"][0]["reason"]


def _quota_for_one_vcpu(acme, web):
    Quota.objects.create(organization=acme, project=web, max_vcpus=1)


@pytest.mark.parametrize("case, body, field, words", [
    ("unknown item", {"catalog_item": "no-such-item"}, "catalog_item", "No catalog item"),
    ("unknown item id", {"catalog_item": 999999}, "catalog_item", "No catalog item"),
    ("wrong parameter type", {"catalog_item": "two-tier-web-application", "parameters": {"web_count": "many"}},
     "parameters", "web_count"),
    ("parameters not a mapping", {"parameters": ["x"]}, "parameters", "dictionary"),
    ("size over the quota", {"size": "large"}, "size", "vCPU quota of project"),
    ("unknown size", {"size": "huge"}, "size", "Unknown size"),
    ("foreign project", {"project": "<ops>"}, "project", "does not exist"),
    ("foreign cloud", {"cloud": "<sim-globex>"}, "cloud", "granted to this project"),
    ("foreign cloud slug", {"cloud": "sim-globex"}, "cloud", "granted to this project"),
    ("cloud and policy", {"cloud": "sim-east", "policy": "spread"}, "policy", "not both"),
    ("bad name", {"name": "Bad Name"}, "name", "lowercase"),
    ("lease not a number", {"lease_days": "soon"}, "lease_days", "valid integer"),
    ("unknown field", {"colour": "red"}, "colour", "Unknown field"),
    ("unknown ssh key", {"ssh_key": "missing"}, "ssh_key", "No such SSH key"),
])
def test_bad_input_answers_400_with_the_field_and_reserves_nothing(
        api, connor, acme, web, ops, launch_world, post, case, body, field, words):
    _quota_for_one_vcpu(acme, web)
    globex_cloud = CloudAccount.objects.all_tenants().get(slug="sim-globex")
    payload = {"project": web.pk, "catalog_item": "debian-12-server", "name": "fine", **body}
    payload = {k: ops.pk if v == "<ops>" else globex_cloud.pk if v == "<sim-globex>" else v
               for k, v in payload.items()}
    calls = sim_calls()
    response = post(api(connor), f"{API}/deployments/", payload)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert words in " ".join(error["fields"][field]), error
    assert nothing_launched()
    assert sim_calls() == calls


def test_a_viewer_cannot_launch(api, vera, web, launch_world, post):
    response = post(api(vera), f"{API}/deployments/", {"project": web.pk, "catalog_item": "debian-12-server",
                                                       "name": "nope"})
    assert response.status_code == 403 and "deployments.launch" in response.json()["error"]["message"]
    assert nothing_launched()


# --- actions reach the sim ------------------------------------------------------------------------------------
def test_deployment_actions_reach_the_sim(api, connor, launched, post, settle):
    deployment = launched("ops-box", lease_days=2)
    [instance] = deployment["instances"]
    assert instance["state"] == "running" and instance["provider_server_id"] and instance["private_ips"]
    url = f"{API}/deployments/{deployment['id']}"
    server = lambda: SimServer.objects.get(server_id=instance["provider_server_id"])  # noqa: E731

    stopped = post(api(connor), f"{url}/stop/")
    assert stopped.status_code == 202 and stopped.json()["instances"][0]["state"] == "stopping"
    settle()
    assert server().state == "stopped"
    # nothing to stop now: refused, nothing changed
    again = post(api(connor), f"{url}/stop/")
    assert again.status_code == 400 and "can stop now" in again.json()["error"]["message"]

    assert post(api(connor), f"{url}/start/").status_code == 202
    settle()
    assert server().state == "running"
    flavor = server().size_id
    resized = post(api(connor), f"{url}/resize/", {"size": "medium"})
    assert resized.status_code == 202 and resized.json()["instances"][0]["state"] == "resizing"
    settle()
    assert server().state == "running" and server().size_id != flavor
    assert post(api(connor), f"{url}/reboot/").status_code == 202
    settle()
    body = api(connor).get(f"{url}/").json()
    assert body["instances"][0]["state"] == "running" and body["instances"][0]["size"] == "medium"

    extended = post(api(connor), f"{url}/extend/", {"lease_days": 9})
    assert extended.status_code == 202 and extended.json()["lease_expires_at"] > body["lease_expires_at"]

    gone = post(api(connor), f"{url}/delete/")
    assert gone.status_code == 202 and gone.json()["state"] == "deleting"
    settle()
    assert server().state == "deleted"
    assert api(connor).get(f"{url}/").json()["state"] == "deleted"
    verbs = set(AuditEvent.objects.all_tenants().filter(object_id=str(deployment["id"])).values_list("verb",
                                                                                                      flat=True))
    assert {"deployment.request", "instance.stop", "instance.resize", "instance.start", "instance.reboot",
            "deployment.extend", "deployment.delete"} <= verbs


def test_instance_actions_console_and_resync(api, connor, launched, post, settle):
    deployment = launched("one-box")
    instance_id = deployment["instances"][0]["id"]
    url = f"{API}/instances/{instance_id}"
    listed = api(connor).get(f"{API}/instances/?deployment={deployment['id']}").json()["results"]
    assert [i["id"] for i in listed] == [instance_id] and listed[0]["deployment_name"] == "one-box"

    console = post(api(connor), f"{url}/console/")
    assert console.status_code == 200, console.content
    assert console.json()["kind"] == "log" and "cloud-init: hostname one-box" in console.json()["output"]

    assert post(api(connor), f"{url}/stop/").json()["state"] == "stopping"
    settle()
    # the provider is asked now; the instance knows when it was last compared
    synced = post(api(connor), f"{url}/resync/")
    assert synced.status_code == 202 and synced.json()["state"] == "stopped"
    assert synced.json()["last_synced_at"] is not None and synced.json()["synced_seconds_ago"] is not None
    no_console = post(api(connor), f"{url}/reboot/")
    assert no_console.status_code == 400 and "needs a running server" in no_console.json()["error"]["message"]

    assert post(api(connor), f"{url}/delete/").json()["state"] == "deleting"
    settle()
    assert api(connor).get(f"{url}/").json()["state"] == "deleted"
    assert SimServer.objects.get(server_id=deployment["instances"][0]["provider_server_id"]).state == "deleted"


def test_transfer_and_the_owner_rules(api, connor, dennis, launched, post):
    deployment = launched("handover")
    url = f"{API}/deployments/{deployment['id']}/transfer/"
    for owner, words in (("vera", "cannot launch"), ("mallory", "Nobody called"), ("connor", "already owns")):
        response = post(api(connor), url, {"owner": owner})
        assert response.status_code == 400 and words in " ".join(response.json()["error"]["fields"]["owner"])
    moved = post(api(connor), url, {"owner": dennis.pk})
    assert moved.status_code == 202 and moved.json()["owner"] == "dennis"
    assert Instance.objects.all_tenants().get(deployment_id=deployment["id"]).owner_id == dennis.pk


def test_cancel_during_the_launch_and_retry_when_nothing_failed(api, connor, web, launch_world, post, settle):
    response = post(api(connor), f"{API}/deployments/", {"project": web.pk, "catalog_item": "two-tier-web-application",
                                                         "name": "halfway"})
    url = f"{API}/deployments/{response.json()['id']}"
    retry = post(api(connor), f"{url}/retry/")
    assert retry.status_code == 400 and "partly failed" in retry.json()["error"]["message"]
    cancelled = post(api(connor), f"{url}/cancel/")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "deleting"
    settle()
    body = api(connor).get(f"{url}/").json()
    assert body["state"] == "deleted" and "Cancelled by connor" in body["state_message"]
    assert {i["state"] for i in body["instances"]} == {"deleted"}


def test_an_action_body_with_unknown_fields_is_refused(api, connor, launched, post):
    deployment = launched("strict")
    response = post(api(connor), f"{API}/deployments/{deployment['id']}/stop/", {"force": True})
    assert response.status_code == 400 and "force" in response.json()["error"]["fields"]
    assert Instance.objects.all_tenants().get(deployment_id=deployment["id"]).state == "running"


# --- bulk -----------------------------------------------------------------------------------------------------
def test_bulk_answers_per_id_and_invisible_ids_read_like_missing_ones(
        api, connor, vera, launched, post, settle, globex_deployment):
    first, second = launched("bulk-a"), launched("bulk-b")
    ids = [first["id"], globex_deployment.pk, 999999, second["id"]]
    response = post(api(connor), f"{API}/deployments/bulk/", {"ids": ids, "action": "stop"})
    assert response.status_code == 200, response.content
    results = {r["id"]: r for r in response.json()["results"]}
    assert results[first["id"]]["ok"] and results[first["id"]]["state"] == "active"
    assert results[second["id"]]["ok"]
    # someone else's deployment and a missing one: the same answer
    assert results[globex_deployment.pk] == {"id": globex_deployment.pk, "ok": False,
                                             "error": {"code": "not_found", "message": "Not found."}}
    assert results[999999] == {"id": 999999, "ok": False, "error": {"code": "not_found", "message": "Not found."}}
    settle()
    assert set(Instance.objects.all_tenants().filter(deployment_id__in=[first["id"], second["id"]])
               .values_list("state", flat=True)) == {"stopped"}
    # a second stop: each refused with its reason, nothing else changes
    again = post(api(connor), f"{API}/deployments/bulk/", {"ids": [first["id"]], "action": "stop"}).json()
    assert again["results"][0]["ok"] is False and again["results"][0]["error"]["code"] == "invalid"
    # the viewer sees them but may not act
    denied = post(api(vera), f"{API}/deployments/bulk/", {"ids": [first["id"]], "action": "start"}).json()
    assert denied["results"][0]["error"]["code"] == "permission_denied"
    assert Instance.objects.all_tenants().get(deployment_id=first["id"]).state == "stopped"
    refused = post(api(connor), f"{API}/deployments/bulk/", {"ids": [first["id"]], "action": "resize"})
    assert refused.status_code == 400 and "size" in refused.json()["error"]["fields"]


# --- isolation ------------------------------------------------------------------------------------------------
@pytest.fixture
def globex_deployment(mallory, ops, launch_world) -> Deployment:
    """A Globex deployment (rows only) for the bulk and list checks."""
    account = CloudAccount.objects.all_tenants().get(slug="sim-globex")
    deployment = Deployment.objects.create(organization=ops.organization, project=ops, owner=mallory,
                                           name="globex-box", state="active")
    Instance.objects.create(organization=ops.organization, project=ops, deployment=deployment, owner=mallory,
                            name="globex-box", role="server", account=account, region="region-1", size="small",
                            flavor_id="f", vcpus=1, ram_mb=512, state="running")
    return deployment


def _acme_state() -> list[Any]:
    return [
        sorted(Deployment.objects.all_tenants().values_list("pk", "state", "owner_id", "lease_expires_at")),
        sorted(Instance.objects.all_tenants().values_list("pk", "state", "size")),
        Operation.objects.all_tenants().count(),
        AuditEvent.objects.all_tenants().filter(organization__slug="acme").count(),
        sorted(Approval.objects.all_tenants().values_list("pk", "state")),
    ]


DEPLOYMENT_ACTIONS = [("start", {}), ("stop", {}), ("reboot", {}), ("resize", {"size": "medium"}), ("delete", {}),
                      ("resync", {}), ("extend", {"lease_days": 5}), ("transfer", {"owner": "mallory"}),
                      ("retry", {}), ("cancel", {})]
INSTANCE_ACTIONS = [("start", {}), ("stop", {}), ("reboot", {}), ("resize", {"size": "medium"}), ("delete", {}),
                    ("resync", {}), ("console", {})]


def test_an_outsider_gets_404_on_every_acme_object_and_action_and_lists_without_acme_rows(
        api, mallory, connor, launched, post, globex_deployment, sam):
    deployment = launched("secret-box")
    instance_id = deployment["instances"][0]["id"]
    approval_deployment = Deployment.objects.all_tenants().get(pk=deployment["id"])
    approval = Approval.objects.create(organization=approval_deployment.organization,
                                       project=approval_deployment.project, deployment=approval_deployment,
                                       requested_by=connor, reason="test", expires_at=approval_deployment.created_at)
    quota = quota_services.quota_set(actor=sam, organization=approval_deployment.organization, max_vcpus=99)
    operation = Operation.objects.all_tenants().filter(params__instance_id=instance_id).first()
    client = api(mallory)
    before, calls = _acme_state(), sim_calls()

    assert client.get(f"{API}/deployments/{deployment['id']}/").status_code == 404
    assert client.delete(f"{API}/deployments/{deployment['id']}/").status_code == 404
    for name, body in DEPLOYMENT_ACTIONS:
        response = post(client, f"{API}/deployments/{deployment['id']}/{name}/", body)
        assert response.status_code == 404, (name, response.content)
    assert client.get(f"{API}/instances/{instance_id}/").status_code == 404
    for name, body in INSTANCE_ACTIONS:
        response = post(client, f"{API}/instances/{instance_id}/{name}/", body)
        assert response.status_code == 404, (name, response.content)
    for path in (f"approvals/{approval.pk}/", f"quotas/{quota.pk}/", f"operations/{operation.pk}/"):
        assert client.get(f"{API}/{path}").status_code == 404, path
    for path, body in ((f"approvals/{approval.pk}/approve/", {}), (f"approvals/{approval.pk}/reject/",
                                                                   {"comment": "no"})):
        assert post(client, f"{API}/{path}", body).status_code == 404
    assert client.patch(f"{API}/quotas/{quota.pk}/", {"max_vcpus": 1}, format="json").status_code == 404
    assert client.delete(f"{API}/quotas/{quota.pk}/").status_code == 404

    acme_ids = {"deployments": {deployment["id"]}, "instances": {instance_id}, "approvals": {approval.pk},
                "quotas": {quota.pk}, "operations": {operation.pk}}
    for path, ids in acme_ids.items():
        body = client.get(f"{API}/{path}/")
        assert "secret-box" not in body.content.decode(), path
        assert not ids & {row["id"] for row in body.json()["results"]}, path
    assert [d["name"] for d in client.get(f"{API}/deployments/").json()["results"]] == ["globex-box"]
    # ids of Acme projects and clouds in a body are "does not exist", like ids that do not exist
    bulk = post(client, f"{API}/deployments/bulk/", {"ids": [deployment["id"]], "action": "delete"}).json()
    assert bulk["results"][0]["error"]["code"] == "not_found"
    assert _acme_state() == before and sim_calls() == calls


def test_a_viewer_sees_but_cannot_write(api, vera, connor, launched, post):
    deployment = launched("viewed-box")
    instance_id = deployment["instances"][0]["id"]
    client = api(vera)
    before, calls = _acme_state(), sim_calls()
    assert client.get(f"{API}/deployments/{deployment['id']}/").status_code == 200
    assert client.get(f"{API}/instances/{instance_id}/").status_code == 200
    assert client.delete(f"{API}/deployments/{deployment['id']}/").status_code == 403
    for name, body in DEPLOYMENT_ACTIONS:
        response = post(client, f"{API}/deployments/{deployment['id']}/{name}/", body)
        assert response.status_code == 403, (name, response.content)
    for name, body in INSTANCE_ACTIONS:
        response = post(client, f"{API}/instances/{instance_id}/{name}/", body)
        assert response.status_code == 403, (name, response.content)
    assert _acme_state() == before and sim_calls() == calls


def test_a_read_only_token_cannot_act(connor, acme, launched, post):
    deployment = launched("token-box")
    _, secret = accounts.token_create(actor=connor, organization=acme, name="ci", scope="read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    before = _acme_state()
    assert client.get(f"{API}/deployments/{deployment['id']}/").status_code == 200
    response = post(client, f"{API}/instances/{deployment['instances'][0]['id']}/console/")
    assert response.status_code == 403 and "read-only" in response.json()["error"]["message"]
    assert post(client, f"{API}/deployments/{deployment['id']}/stop/").status_code == 403
    assert _acme_state()[:3] == before[:3]


# --- query counts ---------------------------------------------------------------------------------------------
def _rows(n: int, *, acme, web, connor, sam, item) -> None:
    account = CloudAccount.objects.all_tenants().get(slug="sim-east")
    for _ in range(n):
        index = Deployment.objects.all_tenants().count()
        deployment = Deployment.objects.create(organization=acme, project=web, owner=connor, created_by=connor,
                                               name=f"row-{index}", catalog_item=item, state="active",
                                               estimated_hourly=Decimal("0.01"))
        Approval.objects.create(organization=acme, project=web, deployment=deployment, requested_by=connor,
                                reason="r", decided_by=sam, state="approved", expires_at=deployment.created_at)
        for role in ("web", "db"):
            Instance.objects.create(organization=acme, project=web, deployment=deployment, owner=connor,
                                    name=f"row-{index}-{role}", role=role, account=account, region="east-1",
                                    size="small", flavor_id="f", vcpus=1, ram_mb=512, state="running")


@pytest.mark.parametrize("path", ["deployments/", "instances/", "approvals/", "quotas/", "operations/"])
def test_list_queries_do_not_grow_with_rows(api, sam, connor, dennis, acme, web, data, launch_world, path,
                                            django_assert_num_queries):
    item = launch_world["items"]["debian-12-server"]
    grow = {"acme": acme, "web": web, "connor": connor, "sam": sam, "item": item}
    client = api(sam)
    _rows(1, **grow)
    Quota.objects.create(organization=acme, max_vcpus=100)
    Quota.objects.create(organization=acme, project=web, max_vcpus=10)
    Quota.objects.create(organization=acme, user=connor, max_vcpus=5)
    with CaptureQueriesContext(connection) as small:
        first = client.get(f"{API}/{path}")
    assert first.status_code == 200
    _rows(4, **grow)
    Quota.objects.create(organization=acme, project=data, max_vcpus=10)
    Quota.objects.create(organization=acme, user=dennis, max_vcpus=5)
    with django_assert_num_queries(len(small.captured_queries)):
        second = client.get(f"{API}/{path}")
    assert second.status_code == 200
    if path in ("deployments/", "instances/", "approvals/", "quotas/"):
        assert len(second.json()["results"]) > len(first.json()["results"])


def test_deployment_detail_queries_do_not_grow_with_servers(api, sam, connor, acme, web, launch_world,
                                                            django_assert_num_queries):
    item = launch_world["items"]["debian-12-server"]
    _rows(1, acme=acme, web=web, connor=connor, sam=sam, item=item)
    deployment = Deployment.objects.all_tenants().get()
    with CaptureQueriesContext(connection) as small:
        api(sam).get(f"{API}/deployments/{deployment.pk}/")
    account = CloudAccount.objects.all_tenants().get(slug="sim-west")
    for index in range(2, 8):
        Instance.objects.create(organization=acme, project=web, deployment=deployment, owner=connor,
                                name=f"extra-{index}", role="web", index=index, account=account, region="west-1",
                                size="small", flavor_id="f", vcpus=1, ram_mb=512, state="running")
    with django_assert_num_queries(len(small.captured_queries)):
        body = api(sam).get(f"{API}/deployments/{deployment.pk}/").json()
    assert len(body["instances"]) == 8 and body["instance_count"] == 8


def test_list_filters_narrow_and_a_bad_filter_is_a_400(api, sam, connor, dennis, acme, web, data, launch_world):
    item = launch_world["items"]["debian-12-server"]
    _rows(3, acme=acme, web=web, connor=connor, sam=sam, item=item)
    Deployment.objects.all_tenants().filter(name="row-1").update(owner=dennis, state="partially_failed")
    client = api(sam)

    def names(query: str, path: str = "deployments") -> list[str]:
        response = client.get(f"{API}/{path}/?{query}")
        assert response.status_code == 200, response.content
        return sorted(r["name"] for r in response.json()["results"])

    assert names("owner=dennis") == ["row-1"] == names(f"owner={dennis.pk}")
    assert names("state=active") == ["row-0", "row-2"]
    assert names("state=active&state=partially_failed") == ["row-0", "row-1", "row-2"]
    assert names("search=W-2") == ["row-2"]
    assert names(f"catalog_item={item.pk}&project={web.pk}") == ["row-0", "row-1", "row-2"]
    assert names(f"project={data.pk}") == []
    row0 = Deployment.objects.all_tenants().get(name="row-0")
    assert names(f"deployment={row0.pk}", "instances") == ["row-0-db", "row-0-web"]
    east = CloudAccount.objects.all_tenants().get(slug="sim-east")
    assert len(names(f"account={east.pk}&state=running", "instances")) == 6
    for query in ("project=abc", "state=sleeping", "catalog_item=1.5"):
        response = client.get(f"{API}/deployments/?{query}")
        assert response.status_code == 400 and query.split("=")[0] in response.json()["error"]["fields"]


# --- operations -----------------------------------------------------------------------------------------------
def test_operations_show_progress_and_never_user_data_or_keys(api, connor, dennis, launch_world, web, post, settle):
    SshKey.objects.create(user=connor, name="laptop", public_key=SSH_PUBLIC_KEY, fingerprint="SHA256:apitest")
    response = post(api(connor), f"{API}/deployments/", {"project": web.pk, "catalog_item": "two-tier-web-application",
                                                         "name": "shop", "ssh_key": "laptop"})
    assert response.status_code == 201, response.content
    deployment_id = response.json()["id"]
    settle()
    create = Operation.objects.all_tenants().filter(kind="create_server", params__deployment_id=deployment_id)
    assert create.count() == 3 and all(op.params.get("user_data") and op.params.get("public_key") for op in create)

    listed = api(connor).get(f"{API}/operations/?deployment={deployment_id}")
    text = listed.content.decode()
    for secret in ("user_data", "public_key", "AAAAC3NzaC1lZDI1NTE5", "#cloud-config", "tags"):
        assert secret not in text, secret
    rows = listed.json()["results"]
    assert len(rows) == 3 and {r["kind"] for r in rows} == {"create_server"}
    assert all(r["state"] == "succeeded" and r["progress"] == 100 for r in rows)
    assert all(set(r["params"]) <= {"instance_id", "deployment_id", "server_id", "size_id"} for r in rows)
    assert {r["account_name"] for r in rows} == {"sim-east", "sim-west"}
    detail = api(connor).get(f"{API}/operations/{rows[0]['id']}/")
    assert detail.status_code == 200 and "user_data" not in detail.content.decode()
    # a stop of one server appears with its deployment's operations, in the same scope
    instance = Instance.objects.all_tenants().filter(deployment_id=deployment_id).first()
    post(api(connor), f"{API}/instances/{instance.pk}/stop/")
    kinds = [r["kind"] for r in api(connor).get(f"{API}/operations/?deployment={deployment_id}").json()["results"]]
    assert sorted(kinds) == ["create_server"] * 3 + ["stop_server"]
    assert api(connor).get(f"{API}/operations/?deployment={deployment_id}&kind=stop_server").json()["results"]
    # the deployment's detail never shows the key or the user data either
    detail_text = api(connor).get(f"{API}/deployments/{deployment_id}/").content.decode()
    assert "AAAAC3NzaC1lZDI1NTE5" not in detail_text and "#cloud-config" not in detail_text


# --- approvals ------------------------------------------------------------------------------------------------
def test_approvals_requester_sees_own_an_approver_decides(api, connor, sam, marty, web, launch_world, post, settle):
    item = launch_world["items"]["debian-12-server"]
    item.approval_threshold_monthly = Decimal("0.01")
    item.save()
    response = post(api(connor), f"{API}/deployments/", {"project": web.pk, "catalog_item": item.slug,
                                                         "name": "pricey"})
    assert response.status_code == 201 and response.json()["state"] == "pending_approval"
    assert response.json()["approval"]["state"] == "pending" and "threshold" in response.json()["approval"]["reason"]
    [mine] = api(connor).get(f"{API}/approvals/").json()["results"]
    assert mine["deployment_name"] == "pricey" and mine["can_decide"] is False
    # the requester cannot decide, a manager (no deployments.approve) does not even see it
    assert post(api(connor), f"{API}/approvals/{mine['id']}/approve/").status_code == 403
    assert api(marty).get(f"{API}/approvals/").json()["results"] == []
    [pending] = api(sam).get(f"{API}/approvals/?state=pending").json()["results"]
    assert pending["can_decide"] is True
    no_reason = post(api(sam), f"{API}/approvals/{pending['id']}/reject/")
    assert no_reason.status_code == 400 and "comment" in no_reason.json()["error"]["fields"]
    approved = post(api(sam), f"{API}/approvals/{pending['id']}/approve/", {"comment": "fine"})
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert approved.json()["decided_by"] == "sam"
    settle()
    assert api(connor).get(f"{API}/deployments/{mine['deployment']}/").json()["state"] == "active"
    twice = post(api(sam), f"{API}/approvals/{pending['id']}/reject/", {"comment": "late"})
    assert twice.status_code == 400 and "already approved" in twice.json()["error"]["message"]


# --- quotas ---------------------------------------------------------------------------------------------------
def test_quotas_admins_set_them_members_see_what_applies_with_used(
        api, sam, connor, dennis, vera, mallory, acme, web, data, ops, launched, post):
    launched("counted")
    created = post(api(sam), f"{API}/quotas/", {"project": web.pk, "max_vcpus": 40, "max_instances": 5})
    assert created.status_code == 201, created.content
    quota = created.json()
    assert quota["scope"] == "project" and quota["organization"] == acme.pk and quota["project_name"] == "Web"
    again = post(api(sam), f"{API}/quotas/", {"project": web.pk, "max_ram_mb": 8192})
    assert again.status_code == 200 and again.json()["id"] == quota["id"]
    assert (again.json()["max_vcpus"], again.json()["max_ram_mb"]) == (40, 8192)  # left out: kept
    for body in ({"organization": acme.pk, "max_instances": 50}, {"organization": acme.pk, "user": "dennis",
                                                                   "max_vcpus": 2}):
        assert post(api(sam), f"{API}/quotas/", body).status_code == 201

    # what is used is what the launch checks use
    usage = {q.pk: held for q, held in quota_usage(project=web, user=connor)}
    seen = {q["id"]: q for q in api(connor).get(f"{API}/quotas/").json()["results"]}
    assert seen[quota["id"]]["used"] == usage[quota["id"]] and seen[quota["id"]]["used"]["instances"] == 1
    # connor sees the organisation's and web's quotas, not dennis's own
    assert {q["scope"] for q in seen.values()} == {"organization", "project"}
    assert {q["scope"] for q in api(sam).get(f"{API}/quotas/").json()["results"]} == {"organization", "project",
                                                                                        "user"}
    assert api(mallory).get(f"{API}/quotas/").json()["results"] == []

    refused = [
        (connor, {"project": web.pk, "max_vcpus": 1000}, 403),
        (vera, {"project": web.pk, "max_vcpus": 1000}, 403),
        (sam, {"project": ops.pk, "max_vcpus": 1}, 400),
        (sam, {"organization": acme.pk, "user": "mallory", "max_vcpus": 1}, 400),
        (sam, {"project": web.pk, "user": "connor", "max_vcpus": 1}, 400),
        (sam, {"project": web.pk, "max_vcpus": -1}, 400),
        (sam, {"project": web.pk, "max_vcpus": "many"}, 400),
    ]
    before = sorted(Quota.objects.all_tenants().values_list("pk", "max_vcpus", "max_ram_mb"))
    for user, body, code in refused:
        assert post(api(user), f"{API}/quotas/", body).status_code == code, (user.username, body)
    assert api(connor).patch(f"{API}/quotas/{quota['id']}/", {"max_vcpus": 1}, format="json").status_code == 403
    assert sorted(Quota.objects.all_tenants().values_list("pk", "max_vcpus", "max_ram_mb")) == before

    patched = api(sam).patch(f"{API}/quotas/{quota['id']}/", {"max_vcpus": None}, format="json")
    assert patched.status_code == 200 and patched.json()["max_vcpus"] is None
    assert patched.json()["max_instances"] == 5
    assert api(sam).delete(f"{API}/quotas/{quota['id']}/").status_code == 204
    assert not Quota.objects.all_tenants().filter(pk=quota["id"]).exists()
    verbs = list(AuditEvent.objects.all_tenants().filter(object_type="quota", object_id=str(quota["id"]))
                 .order_by("pk").values_list("verb", flat=True))
    assert verbs == ["quota.create", "quota.update", "quota.update", "quota.delete"]


def test_quota_services_check_every_value_and_the_scope(sam, connor, acme, web, ops, mallory):
    with pytest.raises(PermissionDenied):
        quota_services.quota_set(actor=connor, organization=acme, max_vcpus=1)
    for limits, field in (({"max_vcpus": -1}, "max_vcpus"), ({"max_ram_mb": True}, "max_ram_mb"),
                          ({"max_disk_gb": "lots"}, "max_disk_gb"), ({"max_instances": 2**40}, "max_instances")):
        with pytest.raises(ServiceError) as error:
            quota_services.quota_set(actor=sam, organization=acme, **limits)
        assert field in error.value.message_dict
    with pytest.raises(ServiceError, match="another organisation"):
        quota_services.quota_set(actor=sam, organization=acme, project=ops, max_vcpus=1)
    with pytest.raises(ServiceError, match="not a member"):
        quota_services.quota_set(actor=sam, organization=acme, user=mallory, max_vcpus=1)
    assert not Quota.objects.all_tenants().exists()
    quota = quota_services.quota_set(actor=sam, organization=acme, user=connor, max_vcpus="4")
    assert (quota.user_id, quota.project_id, quota.max_vcpus) == (connor.pk, None, 4)
    # the same values again: nothing written, nothing audited
    events = AuditEvent.objects.all_tenants().count()
    quota_services.quota_set(actor=sam, organization=acme, user=connor, max_vcpus=4)
    assert AuditEvent.objects.all_tenants().count() == events
    with pytest.raises(PermissionDenied):
        quota_services.quota_delete(actor=connor, quota=quota)
    quota_services.quota_delete(actor=sam, quota=quota)
    assert not Quota.objects.all_tenants().exists()


# --- hooks ----------------------------------------------------------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Receiver.received.append({"headers": dict(self.headers), "body": json.loads(body)})
        answer = b'{"allow": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


HOOK_SECRET = "hook-secret-0123456789-abcdef"


def test_hooks_secret_is_write_only_and_test_delivers(api, sam, connor, vera, mallory, acme, receiver, post):
    created = post(api(sam), f"{API}/hooks/", {"organization": acme.pk, "name": "Audit feed", "url": receiver,
                                               "phase": "after_launch", "secret": HOOK_SECRET})
    assert created.status_code == 201, created.content
    hook = created.json()
    assert "secret" not in hook and hook["secret_last4"] == HOOK_SECRET[-4:] and hook["is_enabled"] is True
    url = f"{API}/hooks/{hook['id']}"
    tested = post(api(sam), f"{url}/test/")
    assert tested.status_code == 200, tested.content
    assert tested.json()["state"] == "delivered" and tested.json()["status_code"] == 200
    assert _Receiver.received[0]["body"]["event"] == "test"
    assert "X-Skyport-Signature" in _Receiver.received[0]["headers"]
    deliveries = api(sam).get(f"{API}/hook-deliveries/?hook={hook['id']}").json()["results"]
    assert [d["event"] for d in deliveries] == ["test"] and deliveries[0]["hook_name"] == "Audit feed"

    rotated = api(sam).patch(f"{url}/", {"secret": "another-secret-0123456789-wxyz", "is_enabled": False},
                             format="json")
    assert rotated.status_code == 200 and rotated.json()["secret_last4"] == "wxyz"
    assert rotated.json()["is_enabled"] is False
    bad = post(api(sam), f"{API}/hooks/", {"organization": acme.pk, "name": "Short", "url": receiver,
                                           "phase": "before_launch", "secret": "short"})
    assert bad.status_code == 400 and "secret" in bad.json()["error"]["fields"]

    # only hooks.manage sees hooks: members and outsiders get 404, creating is refused
    before = sorted(Hook.objects.all_tenants().values_list("pk", "name", "is_enabled", "secret_last4"))
    for user in (connor, vera, mallory):
        client = api(user)
        assert client.get(f"{url}/").status_code == 404
        assert client.patch(f"{url}/", {"name": "x"}, format="json").status_code == 404
        assert post(client, f"{url}/test/").status_code == 404
        assert client.delete(f"{url}/").status_code == 404
        assert client.get(f"{API}/hooks/").json()["results"] == []
        assert client.get(f"{API}/hook-deliveries/").json()["results"] == []
    assert post(api(connor), f"{API}/hooks/", {"organization": acme.pk, "name": "Mine", "url": receiver,
                                               "phase": "after_launch", "secret": HOOK_SECRET}).status_code == 403
    assert sorted(Hook.objects.all_tenants().values_list("pk", "name", "is_enabled", "secret_last4")) == before
    assert len(_Receiver.received) == 1

    # the secret is in no answer and no audit row
    for response in (api(sam).get(f"{API}/hooks/"), api(sam).get(f"{url}/"), api(sam).get(f"{API}/hook-deliveries/"),
                     api(sam).get(f"{API}/audit-events/?object_type=hook")):
        assert HOOK_SECRET not in response.content.decode() and "another-secret" not in response.content.decode()
    assert api(sam).delete(f"{url}/").status_code == 204
    assert not Hook.objects.all_tenants().exists() and not HookDelivery.objects.all_tenants().exists()
