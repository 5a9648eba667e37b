"""GET /healthz: 200 when the database and Redis answer, 503 when either does not."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from voiceplatform import health

pytestmark = pytest.mark.django_db


def test_it_answers_200_when_database_and_redis_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True and body["redis"]["ok"] is True
    assert "error" not in body["database"] and "error" not in body["redis"]


def test_it_answers_503_naming_redis_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["redis"]["ok"] is False
    assert body["database"]["ok"] is True


def test_it_answers_503_when_the_database_fails(client, monkeypatch):
    def broken_cursor(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(health.connection, "cursor", broken_cursor)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"]["ok"] is False
    # Issue 17, item 12: public, so no driver error text (it can carry hosts, users, paths).
    assert "connection refused" not in response.content.decode() and "error" not in body["database"]


def test_it_needs_no_login_and_only_allows_get(client):
    assert client.get("/healthz").status_code in (200, 503)
    assert client.post("/healthz").status_code == 405


def test_it_reuses_one_redis_client_across_requests(client, monkeypatch):
    import redis

    made = []
    real = redis.Redis.from_url

    def counting_from_url(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    health._redis_clients.clear()
    monkeypatch.setattr(redis.Redis, "from_url", counting_from_url)
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert len(made) == 1
