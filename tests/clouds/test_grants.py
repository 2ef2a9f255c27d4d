"""Grants: delegating an account (or some regions) to a project; revocation stops launches at once."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from apps.clouds import services
from apps.clouds.models import CloudGrant
from apps.clouds.selectors import can_launch
from apps.core.models import AuditEvent
from tests.clouds.accounts_world import DBS

pytestmark = pytest.mark.django_db(databases=DBS)


def test_grant_then_revoke_stops_new_launches_at_once(sam, sarah, connor, east, web):
    assert not can_launch(connor, east, "region-1", web)
    grant = services.grant_create(actor=sarah, account=east, project=web)
    assert can_launch(connor, east, "region-1", web)
    services.grant_revoke(actor=sarah, grant=grant)
    decision = can_launch(connor, east, "region-1", web)
    assert not decision and "not granted" in decision.reason
    events = AuditEvent.objects.all_tenants().filter(verb__startswith="cloud_grant.")
    verbs = list(events.values_list("verb", flat=True))
    assert sorted(verbs) == ["cloud_grant.create", "cloud_grant.revoke"]


def test_region_subset(sam, connor, east, data):
    services.grant_create(actor=sam, account=east, project=data, regions=["region-1"])
    assert can_launch(connor, east, "region-1", data)
    assert "only in region-1" in can_launch(connor, east, "region-2", data).reason


def test_bad_grants_are_refused(sam, east, web, ops):
    with pytest.raises(ValidationError):
        services.grant_create(actor=sam, account=east, project=ops)  # Globex project
    with pytest.raises(ValidationError):
        services.grant_create(actor=sam, account=east, project=web, regions=["nowhere"])
    services.grant_create(actor=sam, account=east, project=web)
    with pytest.raises(ValidationError):
        services.grant_create(actor=sam, account=east, project=web)
    assert CloudGrant.objects.all_tenants().filter(account=east).count() == 1


def test_only_grant_managers_grant(marty, connor, mallory, east, web):
    for actor in (marty, connor, mallory):
        with pytest.raises(PermissionDenied):
            services.grant_create(actor=actor, account=east, project=web)
    assert not CloudGrant.objects.all_tenants().filter(account=east).exists()


def test_deactivated_or_failing_account_blocks_launches(sam, connor, east_granted, web):
    from apps.clouds.models import CloudAccount, Health

    CloudAccount.objects.all_tenants().filter(pk=east_granted.pk).update(health=Health.FAILING, health_message="auth")
    east_granted.refresh_from_db()
    assert "failing" in can_launch(connor, east_granted, "region-1", web).reason
    CloudAccount.objects.all_tenants().filter(pk=east_granted.pk).update(health=Health.DEGRADED)
    east_granted.refresh_from_db()
    assert can_launch(connor, east_granted, "region-1", web)
    services.cloud_account_deactivate(actor=sam, account=east_granted)
    east_granted.refresh_from_db()
    assert "deactivated" in can_launch(connor, east_granted, "region-1", web).reason
