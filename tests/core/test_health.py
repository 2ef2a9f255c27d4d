"""/healthz (liveness: no database, no network) and /readyz (readiness: database, Redis, broker), for load
balancers: no session needed, never cached, no HTTPS redirect, and a failing component named without its address."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_checks_each_component(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    checks = response.json()["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["redis"]["status"] == ("ok" if settings.REDIS_URL else "not used (embedded default)")
    assert set(checks) == {"database", "redis", "broker"}


def test_readyz_names_a_broker_that_does_not_answer_and_not_its_address(client, settings):
    from portal.celery import app

    # read first: Celery loads its configuration from the settings lazily, and must not load this test's override
    broker, eager = app.conf.broker_url, app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.broker_url = "redis://:s3cret-broker-password@127.0.0.1:1/0"  # nothing listens on port 1
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url, app.conf.task_always_eager = broker, eager
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing" and body["checks"]["broker"]["status"] == "failing"
    assert body["checks"]["database"]["status"] == "ok"
    assert "s3cret" not in response.content.decode() and "127.0.0.1" not in response.content.decode()


def test_readyz_names_a_redis_that_does_not_answer(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["redis"]["status"] == "failing"


def test_probes_are_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # as SKYPORT_HTTPS=1 sets it; the exemptions are the project's own
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/accounts/login/").status_code == 301  # everything else is
