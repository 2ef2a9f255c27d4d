"""Races that only a real server can show: several connections at once, row locks, an atomic shared cache.
Each thread has its own database connection; a Barrier releases them together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from apps.accounts import services, throttle
from apps.accounts.models import Membership, User
from apps.core.permissions import ServiceError
from apps.core.roles import Role

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: SQLite serialises every writer, so these races cannot happen there "
        "(set DATABASE_URL=postgres://... and run `make test-postgres`)",
    ),
]


def race(n: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run work(i) in n threads released at the same moment; returns (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            value = work(i)
            with lock:
                results.append(value)
        except BaseException as exc:  # collected and asserted on by the test
            with lock:
                errors.append(exc)
        finally:
            connection.close()  # each thread opened its own connection

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (lock never released?)"
    return results, errors


def test_parallel_accepts_of_one_invitation_create_one_membership(sam, acme, web):
    invitation, secret = services.invitation_create(
        actor=sam, organization=acme, project=web, email="newcomer@acme.example", role=Role.MEMBER
    )
    newcomer = User.objects.create_user(username="newcomer", email="newcomer@acme.example", password="x" * 12)

    def accept(_: int) -> int:
        user = User.objects.get(pk=newcomer.pk)  # every thread loads its own row, as separate requests would
        return services.invitation_accept(user=user, secret=secret).pk

    results, errors = race(8, accept)

    assert len(results) == 1
    assert len(errors) == 7
    assert all(isinstance(e, ServiceError) for e in errors), errors
    assert {e.messages[0] for e in errors} == {"This invitation is accepted. Ask for a new one."}
    memberships = Membership.objects.all_tenants().filter(user=newcomer)
    assert list(memberships.values_list("pk", "project_id", "role")) == [(results[0], web.pk, Role.MEMBER)]
    invitation.refresh_from_db()
    assert invitation.accepted_by_id == newcomer.pk


def _demote(actor: User, membership: Membership) -> None:
    services.membership_update(actor=actor, membership=membership, role=Role.MANAGER)


def _remove(actor: User, membership: Membership) -> None:
    services.membership_remove(actor=actor, membership=membership)


@pytest.mark.parametrize("change", [_demote, _remove], ids=["demote", "remove"])
def test_two_admins_changing_each_other_at_once_leave_one_admin(sam, acme, change):
    second = User.objects.create_user(username="sam2", email="sam2@acme.example", password="x" * 12)
    services.membership_create(actor=sam, user=second, organization=acme, role=Role.ADMIN)
    admin_rows = Membership.objects.all_tenants().filter(
        organization=acme, project__isnull=True, role=Role.ADMIN
    )
    sams = admin_rows.get(user=sam)
    seconds = admin_rows.get(user=second)
    # each admin demotes (or removes) the other
    plans = [(sam.pk, seconds.pk), (second.pk, sams.pk)]

    def work(i: int) -> int:
        actor_id, membership_id = plans[i]
        actor = User.objects.get(pk=actor_id)
        change(actor, Membership.objects.all_tenants().get(pk=membership_id))
        return membership_id

    results, errors = race(2, work)

    assert len(results) == 1
    assert len(errors) == 1
    assert isinstance(errors[0], ServiceError), errors  # a clear refusal, not a deadlock
    assert errors[0].messages == ["An organisation needs at least one admin: make somebody else admin first."]
    survivor = sams if results[0] == seconds.pk else seconds
    assert list(admin_rows.values_list("pk", flat=True)) == [survivor.pk]


@pytest.mark.skipif(
    "RedisCache" not in settings.CACHES["default"]["BACKEND"],
    reason="needs the Redis cache (set REDIS_URL): the local-memory cache is per process",
)
def test_parallel_failed_sign_ins_are_counted_exactly(connor):
    login, ip = connor.username, "203.0.113.7"

    results, errors = race(20, lambda _: throttle.count_attempt(login, ip))

    assert errors == []
    assert sorted(results) == list(range(1, 21))  # every increment was seen by exactly one attempt
    assert cache.get(throttle._key(login, ip)) == 20
    assert throttle.is_blocked(login, ip)
    assert not throttle.is_blocked(login, "203.0.113.8")
