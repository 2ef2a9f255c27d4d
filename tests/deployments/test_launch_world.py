"""One read of the clouds per launch, and the first run of the create operation in the launch task itself.

The launch check and placement answer from the same snapshot (`apps.catalog.profiles.launch_world`) exactly what
they answer on their own; a snapshot read for another image or project is never used. The launch task runs the
create operation's first steps itself, under the operation's claim, so a queued or periodic run of the same
operation does nothing twice."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.accounts import services as accounts
from apps.catalog import profiles
from apps.catalog.catalog import catalog_item_launch_check
from apps.catalog.models import ImageCopy
from apps.clouds.models import Operation
from apps.clouds.operations import operation_claim
from apps.clouds.operations_tasks import operation_run_here, operations_resume
from apps.clouds.sim.models import SimCloud
from apps.deployments import services
from apps.deployments.models import Deployment, Hook, Instance
from apps.deployments.placement import Candidate, Rejection, placement_candidates
from apps.deployments.tasks import deployment_launch_task
from tests.deployments.conftest import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def sim_calls(method: str) -> int:
    return sum(int(cloud.call_counts.get(method, 0)) for cloud in SimCloud.objects.all())


def _plain(result: tuple[list[Candidate], list[Rejection]]) -> tuple[list[Any], list[Any]]:
    candidates, rejections = result
    return ([(c.account.pk, c.region, c.flavor.pk, c.price_per_hour, c.provider_image_id) for c in candidates],
            [(r.where, r.reason) for r in rejections])


def _image_items(launch_world: dict[str, Any]) -> list[Any]:
    return [launch_world["items"][slug] for slug in ("debian-12-server", "ubuntu-2404-server")]


def test_placement_from_the_snapshot_answers_what_placement_reads_on_its_own(connor, web, launch_world):
    for item in _image_items(launch_world):
        alone = _plain(placement_candidates(user=connor, project=web, image=item.image, profile=item.profile))
        shared = _plain(placement_candidates(user=connor, project=web, image=item.image, profile=item.profile,
                                             world=profiles.launch_world(web, item.image)))
        assert shared == alone
        assert alone[0], "the demo item has somewhere to go"


def test_a_snapshot_of_another_image_or_project_is_not_used(connor, web, data, launch_world):
    debian, ubuntu = _image_items(launch_world)
    assert debian.image.pk != ubuntu.image.pk
    other_image = profiles.launch_world(web, ubuntu.image)
    alone = _plain(placement_candidates(user=connor, project=web, image=debian.image, profile=debian.profile))
    assert _plain(placement_candidates(user=connor, project=web, image=debian.image, profile=debian.profile,
                                       world=other_image)) == alone
    other_project = profiles.launch_world(data, debian.image)
    assert not other_project.serves(web, debian.image)
    assert catalog_item_launch_check(debian, project=web, world=other_project) == catalog_item_launch_check(
        debian, project=web)


def test_the_launch_check_from_the_snapshot_finds_the_same_problems(web, launch_world):
    debian = launch_world["items"]["debian-12-server"]
    assert catalog_item_launch_check(debian, project=web, world=profiles.launch_world(web, debian.image)) == []
    ImageCopy.objects.all_tenants().filter(image=debian.image).delete()
    alone = catalog_item_launch_check(debian, project=web)
    assert alone and "has no copy" in alone[-1]
    assert catalog_item_launch_check(debian, project=web, world=profiles.launch_world(web, debian.image)) == alone


# --- the first run of the create operation, in the launch task -----------------------------------------------------
@pytest.fixture
def requested(connor, acme, web, launch_world, django_capture_on_commit_callbacks) -> int:
    """A recorded launch of the demo's single-server item, its launch task not run yet."""
    Hook.objects.all_tenants().update(is_enabled=False)
    _, secret = accounts.token_create(actor=connor, organization=acme, name="inline", scope="write")
    client = APIClient(HTTP_AUTHORIZATION=f"Token {secret}")
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/api/v1/deployments/", {"project": web.pk, "catalog_item": "debian-12-server",
                                                        "name": "inline"}, format="json")
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def test_the_launch_task_runs_the_first_steps_of_the_create_itself(requested, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as held:
        deployment_launch_task(requested)  # as a worker runs it
        # nothing held for after the commit has run yet: the create happened in the launch itself
        operation = Operation.objects.all_tenants().get(kind="create_server")
        assert sim_calls("create_server") == 1
        assert operation.result["server_id"] and operation.state == Operation.State.PENDING  # parked for the build
        assert operation.lease_owner == "" and operation.attempt == 0
        assert Instance.objects.all_tenants().get(deployment_id=requested).provider_server_id
    # whatever was held (events) runs now; a resume finds the parked operation not due and runs nothing
    for callback in held:
        callback()
    assert operations_resume() == 0
    assert sim_calls("create_server") == 1


def test_the_periodic_resume_leaves_the_creates_to_the_queue(requested, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as held:
        services.deployment_launch(requested)  # as deployments_resume calls it, for many launches in a row
        operation = Operation.objects.all_tenants().get(kind="create_server")
        assert operation.result == {} and sim_calls("create_server") == 0
    for callback in held:  # the queued run (eager in tests)
        callback()
    assert sim_calls("create_server") == 1


def test_an_operation_claimed_elsewhere_is_not_run_here(requested, django_capture_on_commit_callbacks):
    # the launch task has committed the create for running here, and another worker claims it first
    Deployment.objects.all_tenants().filter(pk=requested).update(state="provisioning")
    run_here: list[int] = []
    with django_capture_on_commit_callbacks(execute=False):
        services.deployment_advance(requested, run_here=run_here)
    operation = Operation.objects.all_tenants().get(kind="create_server")
    assert run_here == [operation.pk]
    assert operation_claim(operation.pk, worker_id="another-worker")
    assert operation_run_here(operation.pk) is None
    operation.refresh_from_db()
    assert operation.state == Operation.State.RUNNING and operation.lease_owner == "another-worker"
    assert operation.attempt == 1 and operation.step == 0
    assert sim_calls("create_server") == 0
