"""The instance state machine and the deployment state derived from it: every allowed move is applied and recorded
with its snapshot, every other move is refused and changes nothing."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.catalog.models import CatalogItem
from apps.deployments.models import Deployment, Instance, InstanceTransition
from apps.deployments.states import ALLOWED, DeploymentState, InstanceState, derive_deployment_state
from apps.deployments.transitions import IllegalTransition, transition
from tests.catalog.test_profiles import make_account, make_image, make_profile

pytestmark = pytest.mark.django_db

S, D = InstanceState, DeploymentState


@pytest.fixture
def deployment(acme, web, connor):
    image = make_image(web, "Debian", "12")
    profile = make_profile(acme, "small", 1, 2048)
    item = CatalogItem.objects.create(organization=acme, project=web, name="Debian", slug="debian", kind="image",
                                      image=image, profile=profile)
    return Deployment.objects.create(organization=acme, project=web, owner=connor, name="app", catalog_item=item,
                                     state=D.PROVISIONING)


def make_instance(deployment, *, role="web", index=1, state=S.PENDING):
    account = make_account(deployment.organization, f"acct-{role}-{index}")
    return Instance.objects.create(
        organization=deployment.organization, project=deployment.project, deployment=deployment,
        owner=deployment.owner, name=f"{deployment.name}-{role}-{index}", role=role, index=index, account=account,
        region="region-1", size="small", flavor_id="s1", vcpus=1, ram_mb=2048, disk_gb=20,
        price_per_hour=Decimal("0.02"), state=state,
    )


@pytest.mark.parametrize(("start", "to"), [(a, b) for a, targets in ALLOWED.items() for b in sorted(targets)])
def test_every_allowed_move_is_applied_and_recorded_with_its_snapshot(deployment, start, to):
    instance = make_instance(deployment, state=start)
    observed = timezone.now() - datetime.timedelta(seconds=30)
    row = transition(instance, to=to, cause=InstanceTransition.Cause.PROVIDER, observed_at=observed)
    instance.refresh_from_db()
    assert instance.state == to and instance.state_changed_at == observed
    assert (row.from_state, row.to_state, row.observed_at) == (start, to, observed)
    assert row.detected_at >= observed
    assert (row.owner_id, row.account_id, row.region, row.flavor_id, row.size, row.vcpus, row.ram_mb, row.disk_gb,
            row.price_per_hour, row.project_id) == (
        deployment.owner_id, instance.account_id, "region-1", "s1", "small", 1, 2048, 20, Decimal("0.02000"),
        deployment.project_id)


ILLEGAL = [(a, b) for a in S for b in S if b != a and b not in ALLOWED[a]]


@pytest.mark.parametrize(("start", "to"), ILLEGAL)
def test_every_other_move_is_refused_and_changes_nothing(deployment, start, to):
    instance = make_instance(deployment, state=start)
    with pytest.raises(IllegalTransition):
        transition(instance, to=to, cause=InstanceTransition.Cause.USER)
    instance.refresh_from_db()
    assert instance.state == start
    assert not InstanceTransition.objects.all_tenants().exists()


def test_deleted_is_final_and_a_move_to_the_same_state_records_nothing(deployment):
    instance = make_instance(deployment, state=S.RUNNING)
    assert transition(instance, to=S.RUNNING, cause=InstanceTransition.Cause.PROVIDER) is None
    assert ALLOWED[S.DELETED] == frozenset()
    assert not InstanceTransition.objects.all_tenants().exists()


def test_transitions_are_append_only(deployment):
    instance = make_instance(deployment)
    row = transition(instance, to=S.BUILDING, cause=InstanceTransition.Cause.LAUNCH)
    row.message = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        row.save()


def test_the_deployment_follows_its_instances(deployment):
    web1 = make_instance(deployment, index=1)
    web2 = make_instance(deployment, index=2)
    for instance in (web1, web2):
        transition(instance, to=S.BUILDING, cause=InstanceTransition.Cause.LAUNCH)
    transition(web1, to=S.RUNNING, cause=InstanceTransition.Cause.PROVIDER)
    deployment.refresh_from_db()
    assert deployment.state == D.PROVISIONING  # web2 is still building
    sequence = deployment.sequence
    transition(web2, to=S.ERROR, cause=InstanceTransition.Cause.PROVIDER, message="no valid host")
    deployment.refresh_from_db()
    assert (deployment.state, deployment.sequence) == (D.PARTIALLY_FAILED, sequence + 1)
    transition(web2, to=S.RUNNING, cause=InstanceTransition.Cause.PROVIDER)
    deployment.refresh_from_db()
    assert deployment.state == D.ACTIVE
    for instance in (web1, web2):
        transition(instance, to=S.DELETING, cause=InstanceTransition.Cause.USER)
    deployment.refresh_from_db()
    assert deployment.state == D.DELETING
    for instance in (web1, web2):
        transition(instance, to=S.DELETED, cause=InstanceTransition.Cause.OPERATION)
    deployment.refresh_from_db()
    assert deployment.state == D.DELETED
    assert InstanceTransition.objects.all_tenants().filter(instance__deployment=deployment).count() == 9


@pytest.mark.parametrize(("current", "states", "expected"), [
    (D.PENDING_APPROVAL, [], D.PENDING_APPROVAL),
    (D.REJECTED, [S.RUNNING], D.REJECTED),
    (D.CANCELLED, [S.DELETED], D.CANCELLED),
    (D.PROVISIONING, [S.PENDING, S.RUNNING], D.PROVISIONING),
    (D.PROVISIONING, [S.RUNNING, S.STOPPED], D.ACTIVE),
    (D.ACTIVE, [S.RUNNING, S.REBOOTING], D.ACTIVE),
    (D.ACTIVE, [S.RUNNING, S.ERROR], D.PARTIALLY_FAILED),
    (D.ACTIVE, [S.ERROR, S.ERROR], D.PARTIALLY_FAILED),
    (D.ACTIVE, [S.RUNNING, S.DELETING], D.DELETING),
    (D.DELETING, [S.RUNNING, S.DELETED], D.DELETING),
    (D.DELETING, [S.DELETED, S.DELETED], D.DELETED),
    (D.DELETING, [], D.DELETED),
])
def test_derived_deployment_state(current, states, expected):
    assert derive_deployment_state(current, states) == expected


def test_rows_are_scoped_to_who_may_see_them(deployment, connor, vera, mallory, dennis):
    instance = make_instance(deployment)
    transition(instance, to=S.BUILDING, cause=InstanceTransition.Cause.LAUNCH)
    for model in (Deployment, Instance, InstanceTransition):
        assert model.objects.for_user(connor, "deployments.view").count() == 1
        assert model.objects.for_user(vera, "deployments.view").count() == 1  # viewer in web
        assert model.objects.for_user(mallory, "deployments.view").count() == 0
