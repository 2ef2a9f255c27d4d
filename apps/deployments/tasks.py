"""Thin Celery tasks of the deployments app: the launch, and the periodic approval and lease work."""

from __future__ import annotations

from celery import shared_task

from apps.deployments import services


@shared_task(name="apps.deployments.tasks.deployment_launch_task", ignore_result=True)
def deployment_launch_task(deployment_id: int) -> None:
    services.deployment_launch(deployment_id, run_first_here=True)  # one queue hop fewer for the first server


@shared_task(name="apps.deployments.tasks.approvals_expire", ignore_result=True)
def approvals_expire() -> int:
    return services.approvals_expire()


@shared_task(name="apps.deployments.tasks.leases_enforce", ignore_result=True)
def leases_enforce() -> dict[str, int]:
    return services.leases_enforce()


@shared_task(name="apps.deployments.tasks.deployments_resume", ignore_result=True)
def deployments_resume() -> dict[str, int]:
    return services.deployments_resume()
