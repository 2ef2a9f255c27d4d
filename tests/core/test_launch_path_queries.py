"""Query and connection costs on the launch path that the launch benchmark (bench/launch_throughput.py) found:
a tenant row saved again does not look its project up, a project's organisation is read once, and live events sent
from a worker reuse one event loop (and so one Redis connection) instead of starting a loop per message."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Membership
from apps.core import events, tenancy
from apps.core.tenancy import CrossTenantError


def _project_lookups(queries: CaptureQueriesContext) -> int:
    return sum('FROM "accounts_project"' in q["sql"] for q in queries.captured_queries)


@pytest.mark.django_db
class TestTenantSaveQueries:
    def test_saving_a_loaded_row_again_does_not_look_up_its_project(self, connor, web):
        membership = Membership.objects.all_tenants().get(user=connor, project=web)
        membership.role = "viewer"
        with CaptureQueriesContext(connection) as queries:
            membership.save(update_fields=["role"])
        assert _project_lookups(queries) == 0
        assert Membership.objects.all_tenants().get(pk=membership.pk).role == "viewer"

    def test_moving_a_loaded_row_to_a_project_of_another_organisation_is_still_refused(self, connor, web, ops):
        membership = Membership.objects.all_tenants().get(user=connor, project=web)
        membership.project = ops
        membership._state.fields_cache.pop("project", None)
        with pytest.raises(CrossTenantError):
            membership.save()
        assert Membership.objects.all_tenants().get(pk=membership.pk).project_id == web.pk

    def test_a_project_of_another_organisation_is_refused_when_its_organisation_was_read_before(
            self, connor, globex, web, settings):
        tenancy._PROJECT_ORGS.clear()
        assert tenancy.project_organization_id(web.pk) == web.organization_id
        before = Membership.objects.all_tenants().count()
        with pytest.raises(CrossTenantError):
            Membership.objects.create(user=connor, organization=globex, project_id=web.pk, role="member")
        assert Membership.objects.all_tenants().count() == before

    def test_a_project_organisation_is_read_once_on_postgresql_only(self, web):
        tenancy._PROJECT_ORGS.clear()
        with CaptureQueriesContext(connection) as queries:
            tenancy.project_organization_id(web.pk)
            tenancy.project_organization_id(web.pk)
        expected = 1 if connection.vendor == "postgresql" else 2
        assert _project_lookups(queries) == expected

    def test_an_unknown_project_is_not_remembered(self):
        tenancy._PROJECT_ORGS.clear()
        assert tenancy.project_organization_id(987654321) is None
        assert 987654321 not in tenancy._PROJECT_ORGS


class RecordingLayer:
    """A channel layer that is not the in-memory one: records each send with the loop it ran on."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int]] = []

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.sent.append((group, message, id(asyncio.get_running_loop())))


class TestEventSender:
    def test_sends_from_a_plain_thread_share_one_event_loop(self, monkeypatch):
        layer = RecordingLayer()
        monkeypatch.setattr(events, "get_channel_layer", lambda: layer)

        def worker_thread() -> None:  # a fresh thread, as a Celery worker's: no server loop to hand sends back to
            events.send_now("deployment.1", {"type": "deployment.event", "sequence": 1})
            events.send_now("deployment.1", {"type": "deployment.event", "sequence": 2})

        thread = threading.Thread(target=worker_thread)
        thread.start()
        thread.join(timeout=30)
        assert [(g, m["sequence"]) for g, m, _ in layer.sent] == [("deployment.1", 1), ("deployment.1", 2)]
        assert layer.sent[0][2] == layer.sent[1][2]

    def test_a_forked_process_gets_its_own_loop(self, monkeypatch):
        first = events._sender_loop()
        monkeypatch.setattr(events.os, "getpid", lambda: -1)
        second = events._sender_loop()
        try:
            assert second is not first and not second.is_closed()
        finally:
            second.call_soon_threadsafe(second.stop)

    def test_a_failing_send_does_not_raise(self, monkeypatch):
        class Broken(RecordingLayer):
            async def group_send(self, group: str, message: dict[str, Any]) -> None:
                raise ConnectionError("redis is down")

        monkeypatch.setattr(events, "get_channel_layer", lambda: Broken())
        events.send_now("deployment.1", {"type": "deployment.event"})  # logged, not raised
