"""Authorization of every client-API endpoint: owner, other client, no/wrong key, agent-scope key."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client, override_settings

from sessions_app.models import VoiceSession

pytestmark = pytest.mark.django_db

CREATE_BODY = json.dumps({"agent": "support", "user_id": "u1"})


def _h(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _call(http: Client, method: str, path: str, headers: dict[str, str]):
    if method == "get":
        return http.get(path, **headers)
    body = CREATE_BODY if path.endswith("/sessions") else "{}"
    return http.post(path, data=body, content_type="application/json", **headers)


@pytest.fixture
def http() -> Client:
    return Client()


@pytest.fixture
def owned_session(http, agent, owner_client) -> str:
    _, key = owner_client
    response = http.post("/api/v1/sessions", data=CREATE_BODY, content_type="application/json", **_h(key))
    assert response.status_code == 201
    return response.json()["session_id"]


OBJECT_ENDPOINTS = [
    ("get", "/api/v1/sessions/{id}", 200),
    ("post", "/api/v1/sessions/{id}/reconnect", 200),
    ("post", "/api/v1/sessions/{id}/interrupt", 202),
    ("post", "/api/v1/sessions/{id}/end", 200),
]
ALL_ENDPOINTS = [("post", "/api/v1/sessions", 201), ("get", "/api/v1/sessions", 200), *OBJECT_ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "ok"), ALL_ENDPOINTS)
def test_the_owner_may_use_every_endpoint(http, owned_session, owner_client, method, path, ok):
    _, key = owner_client
    response = _call(http, method, path.format(id=owned_session), _h(key))
    assert response.status_code == ok, response.content


@pytest.mark.parametrize(("method", "path", "ok"), ALL_ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer vp_wrong"},
        {"HTTP_AUTHORIZATION": "Basic abc"},
        {"HTTP_AUTHORIZATION": "Bearer "},
    ],
)
def test_it_rejects_missing_or_wrong_keys_with_401(http, owned_session, method, path, ok, headers):
    response = _call(http, method, path.format(id=owned_session), headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "ok"), ALL_ENDPOINTS)
def test_it_rejects_a_deactivated_key(http, owned_session, owner_client, method, path, ok):
    client, key = owner_client
    client.active = False
    client.save(update_fields=["active"])
    assert _call(http, method, path.format(id=owned_session), _h(key)).status_code == 401


@pytest.mark.parametrize(("method", "path", "ok"), ALL_ENDPOINTS)
def test_it_rejects_agent_scope_keys_with_403(http, owned_session, agent_scope_client, method, path, ok):
    _, key = agent_scope_client
    response = _call(http, method, path.format(id=owned_session), _h(key))
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


@pytest.mark.parametrize(("method", "path", "ok"), OBJECT_ENDPOINTS)
def test_another_client_gets_404_for_a_session_it_does_not_own(http, owned_session, other_client, method, path, ok):
    _, key = other_client
    before = VoiceSession.objects.values("state", "reconnect_count", "last_seq").get(pk=owned_session)
    response = _call(http, method, path.format(id=owned_session), _h(key))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert VoiceSession.objects.values("state", "reconnect_count", "last_seq").get(pk=owned_session) == before


@pytest.mark.parametrize(("method", "path", "ok"), OBJECT_ENDPOINTS)
def test_a_missing_session_is_the_same_404(http, owner_client, method, path, ok):
    _, key = owner_client
    response = _call(http, method, path.format(id=uuid.uuid4()), _h(key))
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_another_client_does_not_see_the_session_in_its_list(http, owned_session, other_client):
    _, key = other_client
    body = http.get("/api/v1/sessions", **_h(key)).json()
    assert body["count"] == 0 and body["items"] == []


def test_a_browser_login_does_not_open_the_key_endpoints(http, owned_session, outsider_user):
    http.force_login(outsider_user)
    assert http.get("/api/v1/sessions").status_code == 401
    assert http.get(f"/api/v1/sessions/{owned_session}").status_code == 401


@override_settings(LIVEKIT_LOCAL_MODE=False, LIVEKIT_URL="ws://127.0.0.1:9")
def test_the_webhook_needs_a_livekit_signature_not_a_key(http, owner_client):
    _, key = owner_client
    response = http.post("/api/v1/livekit/webhook", data="{}", content_type="application/webhook+json", **_h(key))
    assert response.status_code == 401 and response.json()["code"] == "invalid_webhook"
