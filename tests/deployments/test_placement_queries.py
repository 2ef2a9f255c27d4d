"""Placement reads the project's grants once, whatever the number of account-regions it decides on."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.clouds.models import CloudGrant
from apps.deployments.placement import placement_candidates
from tests.catalog.test_profiles import make_account, make_flavor
from tests.deployments.test_placement import world  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def _grant_queries(connor, web, image, profile) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        candidates, _ = placement_candidates(user=connor, project=web, image=image, profile=profile)
    return sum('FROM "clouds_cloudgrant"' in q["sql"] for q in queries.captured_queries), [c.where for c in candidates]


def test_grants_are_read_once_for_any_number_of_clouds(acme, connor, web, world):  # noqa: F811
    image, profile, _ = world
    few, where = _grant_queries(connor, web, image, profile)
    for name in ("more-1", "more-2", "more-3"):
        account = make_account(acme, name)
        make_flavor(account, "s1", 1, 2048, price="0.020")
        CloudGrant.objects.create(organization=acme, account=account, project=web)
    many, _ = _grant_queries(connor, web, image, profile)
    assert many == few
    assert where == ["cheap/region-1", "dear/region-1"]


def test_a_revoked_grant_still_rejects_its_cloud(connor, web, world):  # noqa: F811
    image, profile, accounts = world
    CloudGrant.objects.all_tenants().filter(account=accounts["cheap"]).update(revoked_at="2020-01-01T00:00:00Z")
    candidates, rejected = placement_candidates(user=connor, project=web, image=image, profile=profile)
    assert [c.where for c in candidates] == ["dear/region-1"]
    assert "grant" in {r.where: r.reason for r in rejected}["cheap/region-1"].lower()
