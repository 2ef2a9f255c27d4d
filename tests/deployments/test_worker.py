"""The launch pipeline with a real Celery worker process against PostgreSQL and Redis (the `.ci/run` stage
`worker`): the request is committed here, the tasks travel through Redis, a separate worker process runs the launch,
the provider operations and their follow-ups, and the states arrive in the database — no eager mode anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.db import connection

from apps.clouds.sim.models import SimCloud, SimServer
from apps.deployments import services
from apps.deployments.models import Deployment, Instance
from tests.deployments.conftest import SIM_DATABASES

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, databases=SIM_DATABASES)]


def wait_for(check: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def worker(tmp_path) -> Iterator[subprocess.Popen]:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("needs PostgreSQL and Redis (the .ci/run worker stage)")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SKYPORT_REDIS_PREFIX": settings.SKYPORT_REDIS_PREFIX,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SKYPORT_TESTING": "1",  # the same keys and sim switch as this process
        "SKYPORT_INSTALLATION_ID": settings.SKYPORT_INSTALLATION_ID,
    }
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "skyport", "-c", "2", "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_for(lambda: "ready" in (tmp_path / "worker.log").read_text(), "the worker to start", 60)
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()
    print((tmp_path / "worker.log").read_text()[-4000:])


@pytest.fixture
def not_eager(settings):  # noqa: F811
    from portal.celery import app

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    yield
    app.conf.task_always_eager = eager


def test_launch_stop_delete_through_a_real_worker(connor, web, launch_world, worker, not_eager):
    # the sims run on the wall clock here, quickly
    SimCloud.objects.update(clock_frozen_at=None, durations={"build": 2, "stop": 1, "start": 1, "reboot": 1,
                                                             "resize": 1, "delete": 1})
    item = launch_world["items"]["two-tier-web-application"]
    deployment, created = services.deployment_request(actor=connor, project=web, item=item, name="via-worker",
                                                      idempotency_key="worker-1")
    assert created

    def state() -> str:
        return Deployment.objects.all_tenants().get(pk=deployment.pk).state

    wait_for(lambda: state() == "active", "the deployment to become active")
    instances = list(Instance.objects.all_tenants().filter(deployment=deployment))
    assert len(instances) == 3 and {i.state for i in instances} == {"running"}
    web1 = next(i for i in instances if i.name == "via-worker-web-1")
    services.instance_action(actor=connor, instance=web1, action="stop")
    wait_for(lambda: Instance.objects.all_tenants().get(pk=web1.pk).state == "stopped", "web-1 to stop")
    services.deployment_delete(actor=connor, deployment=deployment)
    wait_for(lambda: state() == "deleted", "the deployment to be deleted")
    ours = [s for s in SimServer.objects.all() if s.tags.get("skyport:deployment") == str(deployment.pk)]
    assert len(ours) == 3 and {s.state for s in ours} == {"deleted"}
