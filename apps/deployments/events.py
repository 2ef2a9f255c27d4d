"""Live deployment events: thin, numbered, sent once the transaction that caused them commits.

Every event of a deployment takes the next number of its `sequence` (the deployment row is locked while it is
taken), so a client that sees a gap, or reconnects, knows it missed something and fetches the state again through
`GET /api/v1/deployments/<id>/` (which answers with the current `sequence`). Events carry ids and states only:
nothing a receiver could not read through the API.

Message (type "deployment.event"):
  {"deployment", "project", "sequence", "event", "state", "instance", "instance_state", "previous", "operation"}
  event: "transition" (an instance changed state), "state" (the deployment's own state changed), "operation"
  (a provider operation progressed), "approval" (requested, decided or expired), "sync" (freshness only).

Groups: deployment.<id> (watchers of one deployment), project.<id>.deployments (lists of a project), and
org.<id>.deployments (org roles' overviews).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.db.models import F

from apps.core.events import send_on_commit

EVENT_KINDS = ("transition", "state", "operation", "approval", "sync")


def deployment_group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def project_deployments_group(project_id: int) -> str:
    return f"project.{project_id}.deployments"


def org_deployments_group(org_id: int) -> str:
    return f"org.{org_id}.deployments"


def deployment_message(deployment: Any, event: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "deployment.event",
        "deployment": deployment.pk,
        "project": deployment.project_id,
        "sequence": deployment.sequence,
        "event": event,
        "state": deployment.state,
        "instance": fields.get("instance"),
        "instance_state": fields.get("state"),
        "previous": fields.get("previous"),
        "operation": fields.get("operation"),
    }


def _send(deployment: Any, message: dict[str, Any]) -> None:
    for group in (deployment_group(deployment.pk), project_deployments_group(deployment.project_id),
                  org_deployments_group(deployment.organization_id)):
        send_on_commit(group, message)


def deployment_first_event(deployment: Any, event: str, **fields: Any) -> int:
    """Send the first event of a deployment created in the open transaction, which was stored with sequence 1
    already: no other transaction can see the row yet, so its number needs neither the lock nor a read back."""
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown deployment event {event!r}")
    if deployment.sequence != 1:
        raise ValueError("a deployment's first event is number 1: create it with sequence=1")
    _send(deployment, deployment_message(deployment, event, **fields))
    return 1


def deployment_event_locked(deployment: Any, event: str, *, save: Sequence[str] = (), **fields: Any) -> int:
    """`deployment_event` for a deployment row this transaction read with select_for_update: the sequence as read
    is current while the lock is held, so the next number is written without being read back. `save` names fields
    the caller changed on the object: they are written with the sequence, in the same UPDATE."""
    from apps.deployments.models import Deployment

    if event not in EVENT_KINDS:
        raise ValueError(f"unknown deployment event {event!r}")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("deployment_event_locked needs the transaction that locked the deployment")
    deployment.sequence += 1
    if save:
        deployment.save(update_fields=[*save, "sequence"])
    else:
        Deployment.objects.all_tenants().filter(pk=deployment.pk).update(sequence=deployment.sequence)
    _send(deployment, deployment_message(deployment, event, **fields))
    return int(deployment.sequence)


@transaction.atomic
def deployment_event(deployment: Any, event: str, **fields: Any) -> int:
    """Take the deployment's next sequence number and send the event to its groups after the commit. Returns the
    number. `deployment` is updated in place (its sequence and state as stored)."""
    from apps.deployments.models import Deployment

    if event not in EVENT_KINDS:
        raise ValueError(f"unknown deployment event {event!r}")
    rows = Deployment.objects.all_tenants().filter(pk=deployment.pk)
    rows.update(sequence=F("sequence") + 1)
    deployment.sequence, deployment.state = rows.values_list("sequence", "state").get()
    _send(deployment, deployment_message(deployment, event, **fields))
    return int(deployment.sequence)
