"""List endpoints run the same number of queries for 5 rows as for 50."""

from __future__ import annotations

import datetime
import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project, User
from apps.core.models import AuditEvent

_seq = itertools.count()


def _grow(kind: str, n: int, ctx) -> None:
    acme, web, sam, connor = ctx["acme"], ctx["web"], ctx["sam"], ctx["connor"]
    ids = [next(_seq) for _ in range(n)]
    later = timezone.now() + datetime.timedelta(days=7)
    if kind == "organizations":
        orgs = Organization.objects.all_tenants().bulk_create(
            [Organization(name=f"Org {i}", slug=f"org-{i}") for i in ids]
        )
        Membership.objects.all_tenants().bulk_create(
            [Membership(user=sam, organization=o, role="admin") for o in orgs]
        )
    elif kind in ("projects", "me"):
        Project.objects.all_tenants().bulk_create(
            [Project(organization=acme, name=f"P {i}", slug=f"p-{i}") for i in ids]
        )
    elif kind == "memberships":
        users = User.objects.bulk_create([User(username=f"u{i}", email=f"u{i}@acme.example") for i in ids])
        Membership.objects.all_tenants().bulk_create(
            [Membership(user=u, organization=acme, project=web, role="viewer") for u in users]
        )
    elif kind == "invitations":
        Invitation.objects.all_tenants().bulk_create(
            [
                Invitation(
                    organization=acme,
                    project=web,
                    email=f"i{i}@example.com",
                    role="viewer",
                    token_hash=f"{i:064d}",
                    invited_by=sam,
                    expires_at=later,
                )
                for i in ids
            ]
        )
    elif kind == "tokens":
        ApiToken.objects.all_tenants().bulk_create(
            [
                ApiToken(
                    user=connor, organization=acme, name=f"t{i}", key_prefix="sky_x", key_hash=f"{i:064d}"
                )
                for i in ids
            ]
        )
    elif kind == "audit-events":
        AuditEvent.objects.all_tenants().bulk_create(
            [
                AuditEvent(
                    organization=acme,
                    project=web,
                    actor=sam,
                    actor_label="sam",
                    verb="project.update",
                    object_type="project",
                    object_id=str(web.pk),
                    object_label="Web",
                )
                for i in ids
            ]
        )
    elif kind == "notifications":
        Notification.objects.all_tenants().bulk_create(
            [Notification(recipient=sam, organization=acme, text=f"n{i}") for i in ids]
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kind",
    [
        "organizations",
        "projects",
        "memberships",
        "invitations",
        "tokens",
        "audit-events",
        "notifications",
        "me",
    ],
)
def test_list_query_count_does_not_grow_with_rows(
    api, sam, connor, acme, web, kind, django_assert_num_queries
):
    ctx = {"sam": sam, "connor": connor, "acme": acme, "web": web}
    client = api(sam)
    url = f"/api/v1/{kind}/" + ("" if kind == "me" else "?page_size=200")

    _grow(kind, 5, ctx)
    with CaptureQueriesContext(connection) as small:
        first = client.get(url)
    assert first.status_code == 200

    _grow(kind, 45, ctx)
    with django_assert_num_queries(len(small.captured_queries)):
        second = client.get(url)
    assert second.status_code == 200
    if kind == "me":
        assert len(second.json()["projects"]) == len(first.json()["projects"]) + 45
    else:
        assert len(second.json()["results"]) == len(first.json()["results"]) + 45
