"""Log lines for a log pipeline: one access line per request with the request id the response carries, JSON that
parses, no query string (it may carry secrets), probes kept out of INFO, and the request id carried into the
Celery tasks a request queues."""

from __future__ import annotations

import json
import logging

import pytest
from celery import Celery, signals

from apps.core.context import request_id_var
from apps.core.logging import JsonFormatter, RequestContextFilter

pytestmark = pytest.mark.django_db


def _noop() -> None:
    return None


def _json_lines(caplog) -> list[dict]:
    formatter, context = JsonFormatter(), RequestContextFilter()
    lines = []
    for record in caplog.records:
        if record.name != "skyport.access":
            continue
        if not hasattr(record, "request_id"):
            context.filter(record)
        lines.append(json.loads(formatter.format(record)))
    return lines


def test_one_json_access_line_per_request_with_the_request_id_and_user(client, django_user_model, caplog):
    user = django_user_model.objects.create_user("logger", password="pw-logging-1")
    client.force_login(user)
    caplog.set_level(logging.INFO, logger="skyport.access")
    response = client.get("/api/v1/me/?token=sky_should_not_be_logged", HTTP_X_REQUEST_ID="abcdef123456")
    assert response.status_code == 200
    (line,) = _json_lines(caplog)
    assert line["request_id"] == response["X-Request-ID"] == "abcdef123456"
    assert (line["method"], line["path"], line["status"], line["user_id"]) == ("GET", "/api/v1/me/", 200, user.pk)
    assert line["duration_ms"] >= 0 and line["level"] == "INFO" and line["time"].endswith("Z")
    assert "sky_should_not_be_logged" not in json.dumps(line)


def test_an_anonymous_refusal_is_logged_with_its_status_and_no_user(client, caplog):
    caplog.set_level(logging.INFO, logger="skyport.access")
    response = client.get("/api/v1/deployments/")
    (line,) = _json_lines(caplog)
    assert line["status"] == response.status_code == 401
    assert "user_id" not in line


def test_probes_stay_out_of_the_info_log(client, caplog):
    caplog.set_level(logging.INFO, logger="skyport.access")
    assert client.get("/healthz").status_code == 200
    assert _json_lines(caplog) == []
    caplog.set_level(logging.DEBUG, logger="skyport.access")
    client.get("/healthz")
    assert [line["path"] for line in _json_lines(caplog)] == ["/healthz"]


def test_an_exception_is_one_json_line_with_its_traceback():
    record = logging.LogRecord("skyport.test", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RequestContextFilter().filter(record)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "failed here" and "ValueError: boom" in line["exc"] and line["request_id"] == "-"


def test_a_queued_task_carries_the_request_id_and_a_worker_takes_it_up():
    # a broker in memory: the message the request would publish, read back as the worker would get it
    app = Celery("logging-test", broker="memory://", set_as_current=False)
    task = app.task(name="skyport.test.noop")(_noop)
    token = request_id_var.set("feedc0ffee123456")
    try:
        with app.connection_for_write() as connection:
            task.apply_async(connection=connection, queue="logging-test")
            message = connection.SimpleQueue("logging-test").get(timeout=2)
    finally:
        request_id_var.reset(token)
    assert message.headers["skyport_request_id"] == "feedc0ffee123456"
    message.ack()

    # the worker side: the task's request carries the header; its log lines take it, and lose it afterwards
    assert request_id_var.get() == ""
    task.push_request(id="t-1", skyport_request_id=message.headers["skyport_request_id"])
    try:
        signals.task_prerun.send(sender=task, task_id="t-1", task=task, args=(), kwargs={})
        assert request_id_var.get() == "feedc0ffee123456"
        signals.task_postrun.send(sender=task, task_id="t-1", task=task, args=(), kwargs={}, retval=None,
                                  state="SUCCESS")
    finally:
        task.pop_request()
    assert request_id_var.get() == ""


def test_a_task_nobody_queued_from_a_request_logs_under_its_own_id():
    app = Celery("logging-test-2", set_as_current=False)
    task = app.task(name="skyport.test.beat")(_noop)
    task.push_request(id="0123456789abcdef0123")
    try:
        signals.task_prerun.send(sender=task, task_id="0123456789abcdef0123", task=task, args=(), kwargs={})
        assert request_id_var.get() == "0123456789abcdef"
        signals.task_postrun.send(sender=task, task_id="0123456789abcdef0123", task=task, args=(), kwargs={},
                                  retval=None, state="SUCCESS")
    finally:
        task.pop_request()
    assert request_id_var.get() == ""
