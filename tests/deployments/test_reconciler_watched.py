# ruff: noqa: F811 - the fixtures come from test_reconciler and are named as parameters
"""What the reconciler does for deployments someone is watching: a watch that starts makes their account-regions due
at once, and between two sweeps the watched servers are looked up one by one (no extra list call)."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from apps.clouds.sim.services import sim_call_count, sim_server_kill
from apps.deployments.models import InstanceTransition, SweepState
from apps.deployments.presence import watch_touch
from apps.deployments.reconciler import watched_look_ups
from apps.deployments.states import InstanceState as S
from tests.clouds.fixtures_sim import SIM_DATABASES, _close_sim_connection  # noqa: F401  (PostgreSQL teardown)
from tests.deployments.test_reconciler import (  # noqa: F401  (fixtures)
    EP,
    _installation,
    account,
    deployment,
    driver,
    fresh,
    interval,
    make_instance,
    run_sweep,
    running_server,
    state_of,
)

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def _between_sweeps(account, seconds_ago: float = 3) -> None:
    """As if the last sweep finished `seconds_ago` and the next is still a few seconds away."""
    now = timezone.now()
    SweepState.objects.filter(account=account, region="r1").update(
        last_finished_at=now - datetime.timedelta(seconds=seconds_ago),
        next_sweep_at=now + datetime.timedelta(seconds=2),
    )


def test_a_watch_that_starts_makes_the_slow_region_due_now(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    run_sweep(account)
    assert interval(account) == 300  # nothing moves, nobody watches
    watch_touch(deployment.pk)
    assert state_of(account).next_sweep_at <= timezone.now()


def test_a_renewed_watch_does_not_move_the_sweep_again(account, driver, deployment):
    make_instance(deployment, account, server_id=running_server(driver).id)
    watch_touch(deployment.pk)
    run_sweep(account)
    planned = state_of(account).next_sweep_at
    watch_touch(deployment.pk)  # a ping renews the mark
    assert state_of(account).next_sweep_at == planned


def test_watched_servers_are_looked_up_between_sweeps(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    watch_touch(deployment.pk)
    run_sweep(account)
    assert interval(account) == 5
    sim_server_kill(EP, server.id, reason="hypervisor lost power")
    _between_sweeps(account)
    lists = sim_call_count(EP, "list_servers")
    assert watched_look_ups(now=timezone.now()) == 1
    assert fresh(instance).state == S.ERROR
    assert sim_call_count(EP, "list_servers") == lists  # no extra list call
    row = InstanceTransition.objects.all_tenants().filter(instance=instance).latest("pk")
    assert (row.to_state, row.cause) == (S.ERROR, InstanceTransition.Cause.DRIFT)


def test_unwatched_servers_wait_for_the_sweep(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    run_sweep(account)
    sim_server_kill(EP, server.id)
    _between_sweeps(account)
    gets = sim_call_count(EP, "get_server")
    assert watched_look_ups(now=timezone.now()) == 0
    assert fresh(instance).state == S.RUNNING
    assert sim_call_count(EP, "get_server") == gets


def test_no_look_ups_right_after_a_sweep(account, driver, deployment):
    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    watch_touch(deployment.pk)
    run_sweep(account)
    sim_server_kill(EP, server.id)
    _between_sweeps(account, seconds_ago=0.5)
    assert watched_look_ups(now=timezone.now()) == 0
    assert fresh(instance).state == S.RUNNING


def test_on_real_workers_each_regions_look_ups_are_handed_to_a_task_of_their_own(account, driver, deployment):
    from apps.deployments.reconciler import look_up_watched

    server = running_server(driver)
    instance = make_instance(deployment, account, server_id=server.id)
    watch_touch(deployment.pk)
    run_sweep(account)
    sim_server_kill(EP, server.id, reason="hypervisor lost power")
    _between_sweeps(account)
    handed: list[tuple[int, str]] = []
    gets = sim_call_count(EP, "get_server")
    assert watched_look_ups(now=timezone.now(), look_up_elsewhere=lambda a, r: handed.append((a, r))) == 0
    assert handed == [(account.pk, "r1")]
    assert sim_call_count(EP, "get_server") == gets and fresh(instance).state == S.RUNNING  # nothing asked here
    # the task's side: the pass itself
    assert look_up_watched(account.pk, "r1") == 1
    assert fresh(instance).state == S.ERROR
    # a second tick within the same LOOK_UP_SECONDS hands nothing more
    assert watched_look_ups(now=timezone.now(), look_up_elsewhere=lambda a, r: handed.append((a, r))) == 0
    assert handed == [(account.pk, "r1")]
