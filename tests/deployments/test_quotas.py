"""Quota reservations: every applicable quota (organisation, project, user) must hold; a refusal says which quota
and holds nothing; releases give it back once; on PostgreSQL, concurrent requests are exact."""

from __future__ import annotations

import pytest
from django.db import connection

from apps.deployments.models import Quota, QuotaReservation
from apps.deployments.quotas import Demand, QuotaExceeded, quota_release, quota_reserve, quota_usage
from tests.postgres.test_concurrency import race

SMALL = Demand(instances=1, vcpus=2, ram_mb=2048, disk_gb=20)


def held() -> int:
    return QuotaReservation.objects.all_tenants().filter(released_at__isnull=True).count()


@pytest.mark.django_db
def test_no_quota_means_no_limit(web, connor):
    for _ in range(3):
        quota_reserve(project=web, user=connor, demand=Demand(instances=100, vcpus=400))
    assert held() == 3


@pytest.mark.django_db
def test_each_applicable_quota_must_hold_and_a_refusal_holds_nothing(acme, web, data, connor, dennis):
    Quota.objects.create(organization=acme, max_vcpus=10)
    Quota.objects.create(organization=acme, project=web, max_instances=3)
    Quota.objects.create(organization=acme, user=connor, max_ram_mb=5000)

    first = quota_reserve(project=web, user=connor, demand=SMALL)
    quota_reserve(project=web, user=connor, demand=SMALL)
    with pytest.raises(QuotaExceeded, match=r"RAM quota of connor would be exceeded: 4096 MiB of 5000 MiB used, "
                                            r"2048 MiB more asked"):
        quota_reserve(project=web, user=connor, demand=SMALL)
    assert held() == 2
    quota_reserve(project=web, user=dennis, demand=SMALL)  # dennis has no user quota; web allows a third
    with pytest.raises(QuotaExceeded, match="instances quota of project Web"):
        quota_reserve(project=web, user=dennis, demand=SMALL)
    quota_reserve(project=data, user=dennis, demand=SMALL)  # another project: only the organisation's vCPU left
    with pytest.raises(QuotaExceeded, match=r"vCPU quota of the organisation would be exceeded: 8 of 10 used, "
                                            r"4 more asked"):
        quota_reserve(project=data, user=dennis, demand=Demand(instances=1, vcpus=4))
    assert held() == 4

    assert quota_release(first) is True and quota_release(first) is False
    quota_reserve(project=data, user=dennis, demand=Demand(instances=1, vcpus=4))
    usage = {q.scope_label: used for q, used in quota_usage(project=web, user=connor)}
    assert usage["of the organisation"]["vcpus"] == 10
    assert usage["of project Web"]["instances"] == 2
    assert usage["of connor"]["ram_mb"] == 2048


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL: SQLite serialises every writer")
def test_fifty_concurrent_requests_against_a_quota_of_ten(acme, web, connor):
    Quota.objects.create(organization=acme, project=web, max_instances=10)
    results, errors = race(50, lambda i: quota_reserve(project=web, user=connor, demand=SMALL))
    assert len(results) == 10
    assert len(errors) == 40 and all(isinstance(e, QuotaExceeded) for e in errors)
    assert held() == 10
    # released reservations make room again, exactly
    for reservation in results[:3]:
        quota_release(reservation)
    results, errors = race(10, lambda i: quota_reserve(project=web, user=connor, demand=SMALL))
    assert (len(results), len(errors), held()) == (3, 7, 10)
