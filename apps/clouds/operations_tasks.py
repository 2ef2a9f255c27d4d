"""Thin Celery tasks for the Operation protocol: run one operation, and periodically resume those that are due
(parked while waiting for the provider, backing off after an error, or left by a worker that died)."""

from __future__ import annotations

import os
import socket
import uuid

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from apps.clouds.models import Operation
from apps.clouds.operations import operation_run, operations_due


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]


def operation_follow(operation: Operation | None) -> None:
    """Tell the app that started the operation how it went (settings.SKYPORT_OPERATION_FOLLOWERS: kind → function
    taking the operation), e.g. the catalog updating an image copy's state and progress."""
    if operation is None:
        return
    path = settings.SKYPORT_OPERATION_FOLLOWERS.get(operation.kind)
    if path:
        import_string(path)(operation)


def operation_run_and_follow(operation_id: int) -> Operation | None:
    operation = operation_run(operation_id, worker_id=worker_id())
    operation_follow(operation)
    return operation


def operation_run_here(operation_id: int) -> Operation | None:
    """Run the operation in this process now, as its task would, and have a task come back when it parks.

    For a caller that has just committed the operation and is itself a worker (the launch task): one queue hop
    fewer. The protocol is unchanged: `operation_run` takes the claim (an UPDATE on a pending, due row), so a worker
    that got the same operation from the queue or from `operations_resume` at the same time finds it taken and does
    nothing, and an operation this process never reaches (it died first) is pending and due for the resume."""
    operation = operation_run_and_follow(operation_id)
    if operation is None or operation.state != Operation.State.PENDING or operation.next_attempt_at is None:
        return operation
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        # come back when it is due (operations_resume would too, later; the lease makes a double run harmless).
        # Eager mode runs inline, where an eta would be ignored: there the periodic resume picks it up.
        operation_run_task.apply_async((operation_id,), eta=operation.next_attempt_at)
    return operation


@shared_task(name="apps.clouds.operations_tasks.operation_run_task", ignore_result=True)
def operation_run_task(operation_id: int) -> None:
    operation_run_here(operation_id)


def operation_enqueue(operation_id: int) -> None:
    """Run the operation once the caller's transaction has committed (never inside it)."""
    transaction.on_commit(lambda: operation_run_task.delay(operation_id))


@shared_task(name="apps.clouds.operations_tasks.operations_resume", ignore_result=True)
def operations_resume() -> int:
    """Run every due operation here; a lease taken by another worker makes the call a no-op. Returns how many ran."""
    ran = 0
    for operation_id in operations_due():
        if operation_run_and_follow(operation_id) is not None:
            ran += 1
    return ran
