"""The instance state machine and the deployment state derived from its instances: every allowed move is listed
here and nowhere else. `apps.deployments.transitions.transition()` applies a move and records it."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models


class InstanceState(models.TextChoices):
    PENDING = "pending", "Pending"  # recorded, nothing asked of the provider yet
    BUILDING = "building", "Building"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    REBOOTING = "rebooting", "Rebooting"
    RESIZING = "resizing", "Resizing"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    ERROR = "error", "Error"


S = InstanceState
# from → the states it may move to. ERROR is reachable from every live state (the provider says so, or a step
# failed) and may recover to what the provider reports; DELETED is final.
ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.BUILDING, S.DELETING, S.DELETED, S.ERROR}),
    S.BUILDING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.DELETED, S.ERROR}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.REBOOTING, S.RESIZING, S.DELETING, S.DELETED, S.ERROR}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.DELETING, S.DELETED, S.ERROR}),
    S.STOPPED: frozenset({S.STARTING, S.RUNNING, S.RESIZING, S.DELETING, S.DELETED, S.ERROR}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.DELETED, S.ERROR}),
    S.REBOOTING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.DELETED, S.ERROR}),
    S.RESIZING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.DELETED, S.ERROR}),
    S.DELETING: frozenset({S.DELETED, S.ERROR}),
    S.DELETED: frozenset(),
    # BUILDING: "retry failed servers" creates it again
    S.ERROR: frozenset({S.BUILDING, S.RUNNING, S.STOPPED, S.DELETING, S.DELETED}),
}
# states in which the provider is still moving the instance (the reconciler looks often)
TRANSITIONAL: frozenset[str] = frozenset({S.PENDING, S.BUILDING, S.STOPPING, S.STARTING, S.REBOOTING, S.RESIZING,
                                          S.DELETING})
# states that hold provider resources (and so count against quotas and cost money while running)
LIVE: frozenset[str] = frozenset(set(S) - {S.DELETED})
del S


def can_move(current: str, to: str) -> bool:
    return to in ALLOWED[current]


class DeploymentState(models.TextChoices):
    REQUESTED = "requested", "Requested"
    PENDING_APPROVAL = "pending_approval", "Waiting for approval"
    REJECTED = "rejected", "Rejected"
    VETOED = "vetoed", "Vetoed by a hook"
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    PARTIALLY_FAILED = "partially_failed", "Partially failed"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    CANCELLED = "cancelled", "Cancelled"


# decided before any instance exists, or final: instances cannot change them
DECIDED_WITHOUT_INSTANCES: frozenset[str] = frozenset({
    DeploymentState.REQUESTED, DeploymentState.PENDING_APPROVAL, DeploymentState.REJECTED, DeploymentState.VETOED,
    DeploymentState.CANCELLED,
})


def derive_deployment_state(current: str, instance_states: Iterable[str]) -> str:
    """The deployment's state, consistent with its instances:

    - before provisioning, and once rejected, vetoed or cancelled, the deployment's own decision stands;
    - all instances deleted → deleted; any deleting → deleting (while others may still be up);
    - any in error → partially_failed (even if all are in error: the deployment keeps its retry and cancel actions);
    - any still pending/building → provisioning; otherwise (running, stopped, and the transitions between them made
      on purpose) → active.
    """
    if current in DECIDED_WITHOUT_INSTANCES:
        return current
    states = list(instance_states)
    if not states:
        return DeploymentState.DELETED if current in (DeploymentState.DELETING, DeploymentState.DELETED) else current
    if all(s == InstanceState.DELETED for s in states):
        return DeploymentState.DELETED
    if current == DeploymentState.DELETING or any(s == InstanceState.DELETING for s in states):
        return DeploymentState.DELETING
    if any(s == InstanceState.ERROR for s in states):
        return DeploymentState.PARTIALLY_FAILED
    if any(s in (InstanceState.PENDING, InstanceState.BUILDING) for s in states):
        return DeploymentState.PROVISIONING
    return DeploymentState.ACTIVE
