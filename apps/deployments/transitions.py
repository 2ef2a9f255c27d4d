"""Applying a state change: the one place where an instance changes state, a transition row is written with its
snapshot, and the deployment's derived state follows."""

from __future__ import annotations

import datetime

from django.db import transaction
from django.utils import timezone

from apps.deployments.events import deployment_event_locked
from apps.deployments.models import Deployment, Instance, InstanceTransition, QuotaReservation
from apps.deployments.states import DeploymentState, can_move, derive_deployment_state
from apps.deployments.states import InstanceState as S


class IllegalTransition(ValueError):
    """A move the state machine does not allow (apps.deployments.states.ALLOWED)."""


@transaction.atomic
def transition(
    instance: Instance,
    *,
    to: str,
    cause: str,
    message: str = "",
    observed_at: datetime.datetime | None = None,
) -> InstanceTransition | None:
    """Move `instance` to `to`, record it, and bring its deployment's state along. Moving to the state it is in
    records nothing (None). An illegal move raises IllegalTransition and changes nothing.

    The instance row is locked and read again first, so two workers applying moves at once are serialised and the
    second sees the first's result. Tenancy was checked by the service that asked for the change."""
    now = timezone.now()
    locked = Instance.objects.all_tenants().select_for_update(of=("self",)).get(pk=instance.pk)
    if locked.state == to:
        _copy(locked, instance)
        return None
    if not can_move(locked.state, to):
        raise IllegalTransition(f"An instance cannot go from {locked.state} to {to}.")
    row = InstanceTransition.objects.create(
        organization_id=locked.organization_id, project_id=locked.project_id, instance=locked,
        from_state=locked.state, to_state=to, cause=cause, message=message[:500],
        observed_at=observed_at or now, detected_at=now,
        owner_id=locked.owner_id, account_id=locked.account_id, region=locked.region, flavor_id=locked.flavor_id,
        size=locked.size, vcpus=locked.vcpus, ram_mb=locked.ram_mb, disk_gb=locked.disk_gb,
        price_per_hour=locked.price_per_hour,
    )
    locked.state = to
    locked.state_changed_at = observed_at or now
    locked.last_transition_at = now
    fields = ["state", "state_changed_at", "last_transition_at", "updated_at"]
    if to != S.ERROR and locked.error:
        locked.error = ""
        fields.append("error")
    elif to == S.ERROR and message:
        locked.error = message[:1000]
        fields.append("error")
    locked.save(update_fields=fields)
    _copy(locked, instance)
    deployment, changed = _refresh_state(locked.deployment_id)
    deployment_event_locked(deployment, "transition", instance=locked.pk, state=to, previous=row.from_state,
                            save=("state", "updated_at") if changed else ())
    return row


def _copy(source: Instance, target: Instance) -> None:
    target.state, target.state_changed_at = source.state, source.state_changed_at
    target.last_transition_at, target.error = source.last_transition_at, source.error


def deployment_refresh_state(deployment_id: int, *, bump: bool = True) -> Deployment:
    """Set the deployment's state from its instances (locked, so concurrent transitions agree). With `bump`, a
    change is announced as a "state" event. The returned deployment stays locked until the caller's transaction
    ends."""
    deployment, changed = _refresh_state(deployment_id)
    if changed:
        if bump:
            deployment_event_locked(deployment, "state", save=("state", "updated_at"))
        else:
            deployment.save(update_fields=["state", "updated_at"])
    return deployment


def _refresh_state(deployment_id: int) -> tuple[Deployment, bool]:
    """Lock the deployment and derive its state from its instances; a change is made on the object (and the quota
    given back when every server is gone) but left to the caller to write, with the event it sends."""
    deployment = Deployment.objects.all_tenants().select_for_update(of=("self",)).get(pk=deployment_id)
    states = Instance.objects.all_tenants().filter(deployment_id=deployment_id).values_list("state", flat=True)
    derived = derive_deployment_state(deployment.state, states)
    if derived == deployment.state:
        return deployment, False
    deployment.state = derived
    if derived == DeploymentState.DELETED:
        # every server is gone, however that came about (a delete, or the reconciler seeing them go): the quota is
        # given back here, once (a release of a released reservation changes nothing)
        from apps.deployments.quotas import quota_release

        for reservation in QuotaReservation.objects.all_tenants().filter(deployment_id=deployment_id,
                                                                         released_at__isnull=True):
            quota_release(reservation)
    return deployment, True
