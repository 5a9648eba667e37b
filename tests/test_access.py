"""Issue 17, item 12: /metrics and the API docs are not open to the world by default."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_metrics_answer_loopback_and_refuse_other_addresses(client, settings) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 403
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200


def test_with_a_token_set_metrics_need_it_from_everyone(client, settings) -> None:
    """Behind a reverse proxy every client is loopback: the token is what counts then."""
    settings.METRICS_TOKEN = "scrape-token-0123456789"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert ok.status_code == 200 and b"voice_" in ok.content


def test_the_api_docs_are_for_staff_unless_made_public(client, settings, staff_user, outsider_user) -> None:
    settings.API_DOCS_PUBLIC = False
    for path in ("/api/v1/docs", "/api/v1/openapi.json"):
        assert client.get(path).status_code == 302, path  # to the admin login
        client.force_login(outsider_user)
        assert client.get(path).status_code == 302, path
        client.force_login(staff_user)
        assert client.get(path).status_code == 200, path
        client.logout()
    settings.API_DOCS_PUBLIC = True
    assert client.get("/api/v1/docs").status_code == 200
