"""The in-process scheduler (embedded default): runs CELERY_BEAT_SCHEDULE entries when their interval has
elapsed, driven here with an explicit clock instead of sleeps."""

from __future__ import annotations

import datetime
import logging

import pytest
from celery.schedules import crontab, schedule
from django.conf import settings as django_settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django.test import Client
from django.utils import timezone

from apps.accounts.models import Membership, User
from apps.core import scheduler
from apps.core.models import AuditEvent

# the periodic tasks commit and close connections the way they do in production
pytestmark = pytest.mark.django_db(transaction=True)

EXPIRE = "apps.accounts.tasks.expire_memberships"
PRUNE = "apps.accounts.tasks.prune_notifications"
T0 = 1_000_000.0


@pytest.fixture
def two_entries(settings, personas):
    settings.CELERY_BEAT_SCHEDULE = {
        "every-minute": {"task": EXPIRE, "schedule": 60.0},
        "hourly": {"task": PRUNE, "schedule": schedule(datetime.timedelta(hours=1)), "kwargs": {"days": 1}},
    }


def test_due_entries_run_once_per_interval_and_not_before(two_entries):
    state: dict[str, float] = {}
    assert sorted(scheduler.run_due(state, T0)) == ["every-minute", "hourly"]
    assert scheduler.run_due(state, T0) == []
    assert scheduler.run_due(state, T0 + 59.9) == []
    assert scheduler.run_due(state, T0 + 60) == ["every-minute"]
    assert scheduler.run_due(state, T0 + 119.9) == []
    assert scheduler.run_due(state, T0 + 120) == ["every-minute"]
    assert scheduler.run_due(state, T0 + 3599.9) == ["every-minute"]
    assert scheduler.run_due(state, T0 + 3600) == ["hourly"]


def test_a_late_tick_runs_each_entry_once_without_catching_up(two_entries):
    state: dict[str, float] = {}
    scheduler.run_due(state, T0)
    # the process was busy for ten hours: one run each, not ten or six hundred
    assert sorted(scheduler.run_due(state, T0 + 36_000)) == ["every-minute", "hourly"]
    assert scheduler.run_due(state, T0 + 36_000 + 1) == []


def test_the_configured_schedule_runs_cleanly(personas, caplog):
    caplog.set_level(logging.ERROR, logger="apps.core.scheduler")
    assert sorted(scheduler.run_due({}, T0)) == sorted(django_settings.CELERY_BEAT_SCHEDULE)
    assert [r.getMessage() for r in caplog.records] == []  # every task name resolves and runs


def test_a_failing_entry_is_logged_and_does_not_stop_the_others(settings, personas, caplog):
    settings.CELERY_BEAT_SCHEDULE = {
        "broken": {"task": "apps.accounts.tasks.no_such_task", "schedule": 60.0},
        "expire": {"task": EXPIRE, "schedule": 60.0},
    }
    state: dict[str, float] = {}
    with caplog.at_level(logging.ERROR, logger="apps.core.scheduler"):
        assert scheduler.run_due(state, T0) == ["broken", "expire"]
    assert "periodic task broken failed" in caplog.text
    assert scheduler.run_due(state, T0 + 30) == []  # not retried in a tight loop


def test_calendar_schedules_are_refused_loudly(settings):
    settings.CELERY_BEAT_SCHEDULE = {"nightly": {"task": EXPIRE, "schedule": crontab(hour=3, minute=0)}}
    with pytest.raises(ValueError, match="fixed intervals only"):
        scheduler.run_due({}, T0)


def _session_user(session_key: str):
    from importlib import import_module

    request = HttpRequest()
    request.session = import_module(django_settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(request)


def test_expire_memberships_ends_the_sessions_of_a_member_whose_role_expired(connor, vera, sam, web):
    now = timezone.now()
    expired = Membership.objects.all_tenants().get(user=connor, project=web)
    Membership._base_manager.filter(pk=expired.pk).update(expires_at=now - datetime.timedelta(seconds=1))
    later = Membership.objects.all_tenants().get(user=vera, project=web)
    Membership._base_manager.filter(pk=later.pk).update(expires_at=now + datetime.timedelta(hours=1))
    client = Client()
    client.force_login(connor)
    session_key = client.session.session_key
    assert _session_user(session_key).pk == connor.pk
    epochs = dict(User.objects.values_list("username", "session_epoch"))

    state: dict[str, float] = {}
    assert "expire-memberships" in scheduler.run_due(state, T0)

    after = dict(User.objects.values_list("username", "session_epoch"))
    assert after["connor"] == epochs["connor"] + 1
    assert {k: v for k, v in after.items() if k != "connor"} == {
        k: v for k, v in epochs.items() if k != "connor"
    }
    assert not _session_user(session_key).is_authenticated
    events = AuditEvent.objects.all_tenants().filter(verb="membership.expire")
    assert list(events.values_list("object_id", "actor_id")) == [(str(expired.pk), None)]
    assert Membership._base_manager.get(pk=expired.pk).expiry_handled
    assert not Membership._base_manager.get(pk=later.pk).expiry_handled

    # the next run finds nothing to do
    assert "expire-memberships" in scheduler.run_due(state, T0 + 60)
    assert dict(User.objects.values_list("username", "session_epoch")) == after
    assert events.count() == 1
