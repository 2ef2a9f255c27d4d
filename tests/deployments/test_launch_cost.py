"""What one launch costs: the launch request runs a fixed list of queries, answers with exactly what a read of the
deployment shows, and announces itself as event 1; the create operation does not look at a server it has just
created, but parks until the provider's estimate, and the next run finds it running."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts import services as accounts
from apps.clouds.models import Operation
from apps.clouds.sim.models import SimCloud
from apps.clouds.sim.services import sim_advance
from apps.deployments.models import Deployment, Hook, Instance
from tests.deployments.conftest import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)

API = "/api/v1"

# The launch of a single-server catalog item with a token, once the token's last use is recent:
#   token (with user and organisation) · the token user's roles · the project · the catalog item (with image and
#   profile) · the organisation's active accounts · the project's live grants · the flavors · the image's copies
#   (read once, for the launch check and placement: `apps.catalog.profiles.launch_world`) · its publication to the
#   project · a live deployment with the same name · INSERT deployment (stored with its first event's number) ·
#   the quota · INSERT reservation · INSERT instance · INSERT audit event.
# The answer is serialised from the rows just written: no read back, no sequence bump.
LAUNCH_QUERIES = 15


def _real(queries: list[dict[str, Any]]) -> list[str]:
    """The statements sent, without the savepoints of the test's own transaction."""
    return [q["sql"] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


def sim_calls(method: str) -> int:
    return sum(int(cloud.call_counts.get(method, 0)) for cloud in SimCloud.objects.all())


@pytest.fixture
def token_client(connor, acme, launch_world) -> APIClient:
    Hook.objects.all_tenants().update(is_enabled=False)
    _, secret = accounts.token_create(actor=connor, organization=acme, name="cost", scope="write")
    return APIClient(HTTP_AUTHORIZATION=f"Token {secret}")


def test_a_launch_request_runs_a_fixed_number_of_queries_and_answers_what_a_read_shows(
        token_client, web, django_capture_on_commit_callbacks):
    body = {"project": web.pk, "catalog_item": "debian-12-server"}
    with django_capture_on_commit_callbacks(execute=False):
        assert token_client.post(f"{API}/deployments/", {**body, "name": "warm"}, format="json").status_code == 201
    with CaptureQueriesContext(connection) as ctx, django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = token_client.post(f"{API}/deployments/", {**body, "name": "counted"}, format="json")
    queries = _real(ctx.captured_queries)
    assert response.status_code == 201, response.content
    assert len(queries) == LAUNCH_QUERIES, "\n".join(q[:160] for q in queries)
    assert not any(q.startswith("UPDATE") for q in queries)
    for table in ("clouds_cloudaccount", "clouds_cloudgrant", "clouds_flavor", "catalog_imagecopy",
                  "accounts_organization"):
        reads = [q for q in queries if q.startswith("SELECT") and f'FROM "{table}"' in q]
        assert len(reads) == (table != "accounts_organization"), (table, reads)

    answer = response.json()
    # nothing ran after the request (its on-commit work is held): a read shows the same deployment, field by field
    assert token_client.get(f"{API}/deployments/{answer['id']}/").json() == answer
    assert answer["state"] == "requested" and answer["sequence"] == 1 and answer["instance_count"] == 1
    assert answer["approval"] is None and answer["approval_state"] is None
    [instance] = answer["instances"]
    assert instance["id"] == Instance.objects.all_tenants().get(deployment_id=answer["id"]).pk
    assert Deployment.objects.all_tenants().get(pk=answer["id"]).sequence == 1
    assert len(callbacks) >= 1  # the launch task and the "state" event wait for the commit


def test_a_launch_over_the_approval_threshold_is_read_back_with_its_approval(
        api, connor, web, launch_world, django_capture_on_commit_callbacks):
    item = launch_world["items"]["debian-12-server"]
    item.approval_threshold_monthly = 0
    item.save(update_fields=["approval_threshold_monthly"])
    with django_capture_on_commit_callbacks(execute=False):
        response = api(connor).post(f"{API}/deployments/", {"project": web.pk, "catalog_item": item.slug,
                                                            "name": "needs-ok"}, format="json")
    assert response.status_code == 201, response.content
    answer = response.json()
    assert answer["state"] == "pending_approval" and answer["approval"]["state"] == "pending"
    assert answer["sequence"] == 1  # the approval's event, the only one
    assert api(connor).get(f"{API}/deployments/{answer['id']}/").json() == answer


def test_the_create_operation_parks_until_the_build_estimate_instead_of_looking_at_once(
        token_client, web, django_capture_on_commit_callbacks, settle):
    SimCloud.objects.update(durations={"build": 40, "stop": 1, "start": 1, "delete": 1})
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client.post(f"{API}/deployments/", {"project": web.pk, "catalog_item": "debian-12-server",
                                                              "name": "parked"}, format="json")
    assert response.status_code == 201, response.content
    operation = Operation.objects.all_tenants().get(kind="create_server")
    # created, then parked: no look at the server yet, and the wait is not counted as an attempt
    assert operation.state == Operation.State.PENDING and operation.steps[operation.step] == "wait_running"
    assert operation.result["server_id"] and "estimate" in operation.result["waiting_for"]
    assert "park_after_seconds" not in operation.result
    assert operation.attempt == 0
    assert (operation.next_attempt_at - operation.updated_at).total_seconds() >= 40
    assert sim_calls("create_server") == 1 and sim_calls("get_server") == 0

    for endpoint in SimCloud.objects.values_list("endpoint", flat=True):
        sim_advance(endpoint, 41)  # the sim's clock past the build: the park is what kept the worker away
    settle()
    assert Deployment.objects.all_tenants().get(pk=response.json()["id"]).state == "active"
    assert sim_calls("get_server") == 1  # the first look found it running
