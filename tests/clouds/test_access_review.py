"""The access review and can_launch are one policy: they agree for every seeded user × account × region × project,
and the review runs in a bounded number of queries whatever the organisation's size."""

from __future__ import annotations

import pytest

from apps.accounts import services as account_services
from apps.accounts.models import Project, User
from apps.clouds import services
from apps.clouds.models import CloudAccount
from apps.clouds.selectors import access_review, can_launch
from apps.core.access import forget_access
from tests.clouds.accounts_world import DBS

pytestmark = pytest.mark.django_db(databases=DBS)


@pytest.fixture
def demo_clouds(personas):
    from apps.clouds.demo import seed_clouds

    return seed_clouds()


def test_review_and_can_launch_agree_for_everyone(demo_clouds, personas, sarah, sam, acme, web):
    # make the world varied: a region subset, a revoked grant
    west = demo_clouds["sim-west"]
    grant = west.grants.get(project=web)
    services.grant_revoke(actor=sam, grant=grant)
    users = list(User.objects.filter(username__in=personas))
    accounts = list(CloudAccount.objects.all_tenants())
    projects = list(Project.objects.all_tenants())
    reviews = {}
    for org_id in {a.organization_id for a in accounts}:
        admin = sarah if org_id == acme.pk else personas["mallory"]
        reviews[org_id] = access_review(admin, org_id)
    allowed_in_review = {
        (r.account.pk, region, r.project.pk, r.user.pk)
        for review in reviews.values() for r in review.rows for region in r.regions
    }
    checked = 0
    for user in users:
        forget_access(user)
        for account in accounts:
            for region in account.all_regions:
                for project in projects:
                    decision = can_launch(user, account, region, project)
                    key = (account.pk, region, project.pk, user.pk)
                    assert bool(decision) == (key in allowed_in_review), (user, account, region, project, decision)
                    checked += 1
    assert checked > 50
    assert any(r.user.username == "connor" for r in reviews[acme.pk].rows)
    assert not any(r.user.username == "vera" for r in reviews[acme.pk].rows)  # viewers cannot launch
    assert [g.account.name for g in reviews[acme.pk].revoked] == ["sim-west"]


def test_review_filters(east_granted, sarah, acme, web):
    review = access_review(sarah, acme.pk, username="connor")
    assert {r.user.username for r in review.rows} == {"connor"}
    assert {r.project.pk for r in access_review(sarah, acme.pk, project_id=web.pk).rows} == {web.pk}
    data_rows = [r for r in access_review(sarah, acme.pk).rows if r.project.slug == "data"]
    assert data_rows and all(r.regions == ["region-1"] for r in data_rows)


def test_outsiders_get_an_empty_review(east_granted, mallory, acme):
    assert access_review(mallory, acme.pk).rows == []


def _grow(sam, acme, n):
    for i in range(n):
        project = account_services.project_create(actor=sam, organization=acme, name=f"P{i}", slug=f"p{i}")
        user = User.objects.create_user(username=f"user{i}", email=f"user{i}@acme.example", password="x" * 12)
        account_services.membership_create(actor=sam, user=user, organization=acme, project=project, role="member")


def test_review_query_count_is_bounded(east, sam, sarah, acme, django_assert_max_num_queries):
    forget_access(sarah)
    access_review(sarah, acme.pk)  # warm the access cache
    _grow(sam, acme, 3)
    with django_assert_max_num_queries(6):
        small = access_review(sarah, acme.pk)
    _grow_more = 20
    for i in range(_grow_more):
        project = account_services.project_create(actor=sam, organization=acme, name=f"Q{i}", slug=f"q{i}")
        services.grant_create(actor=sam, account=east, project=project)
        user = User.objects.create_user(username=f"quser{i}", email=f"q{i}@acme.example", password="x" * 12)
        account_services.membership_create(actor=sam, user=user, organization=acme, project=project, role="member")
    with django_assert_max_num_queries(6):
        big = access_review(sarah, acme.pk)
    assert len(big.rows) >= len(small.rows) + _grow_more
