"""POST/GET /api/v1/sessions: creation, detail, listing, bad input and the rate limit."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings
from django.test import Client, override_settings
from livekit.api import TokenVerifier

from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.models import SessionEvent, SessionState, VoiceSession
from sessions_app.turns import turn_record

pytestmark = pytest.mark.django_db


def _h(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _create(http: Client, key: str, body: dict | str | bytes, **extra) -> object:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return http.post("/api/v1/sessions", data=data, content_type="application/json", **_h(key), **extra)


@pytest.fixture
def http() -> Client:
    return Client()


def test_it_creates_a_session_with_a_token_for_its_room(http, agent, owner_client):
    client, key = owner_client
    response = _create(http, key, {"agent": "support", "user_id": "caller-42", "metadata": {"plan": "gold"}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"session_id", "room", "url", "token", "expires_at"}
    session = VoiceSession.objects.get(pk=body["session_id"])
    assert session.api_client == client
    assert session.room_name == body["room"]
    assert session.caller_id == "caller-42"
    assert session.metadata == {"plan": "gold"}
    assert session.state == SessionState.CREATED
    assert body["url"] == f"local://{settings.LOCAL_AGENT_HOST}:{settings.LOCAL_AGENT_PORT}"
    claims = TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(body["token"])
    assert claims.video.room == body["room"] and claims.identity == "caller-caller-42"


def test_it_pins_the_published_prompt_version(http, agent, owner_client):
    _, key = owner_client
    published = agent.prompt_versions.get(status="published")
    body = _create(http, key, {"agent": "support", "user_id": "u1"}).json()
    # Publishing a new version later must not change the pinned one.
    v2 = prompt_draft_create(agent=agent, instructions="Second version.")
    prompt_publish(version=v2)
    session = VoiceSession.objects.get(pk=body["session_id"])
    assert session.prompt_version_id == published.pk
    detail = http.get(f"/api/v1/sessions/{session.pk}", **_h(key)).json()
    assert detail["prompt_version"] == published.number


def test_it_records_creation_and_local_dispatch_events_in_sequence(http, agent, owner_client):
    _, key = owner_client
    body = _create(http, key, {"agent": "support", "user_id": "u1"}).json()
    events = list(SessionEvent.objects.filter(session_id=body["session_id"]).values_list("seq", "type", "payload"))
    assert [(seq, kind) for seq, kind, _ in events] == [(1, "session.created"), (2, "agent.dispatch_requested")]
    assert events[1][2]["mode"] == "local"
    assert events[1][2]["agent_name"] == settings.LIVEKIT_AGENT_NAME


def test_it_returns_state_turns_and_latencies_in_the_detail(http, agent, owner_client):
    _, key = owner_client
    sid = _create(http, key, {"agent": "support", "user_id": "u1"}).json()["session_id"]
    turn_record(
        session_id=sid,
        data={
            "index": 0,
            "user_text": "hi",
            "generated_text": "Hello there, how can I help?",
            "heard_text": "Hello there",
            "interrupted": True,
            "interrupt_source": "client",
            "stt_ms": 100,
            "e2e_ms": 900,
            "tool_calls": [{"name": "place_order", "status": "ok"}],
        },
    )
    turn_record(
        session_id=sid,
        data={
            "index": 1,
            "user_text": "bye",
            "generated_text": "Bye",
            "heard_text": "Bye",
            "stt_ms": 300,
            "e2e_ms": 2000,
        },
    )
    detail = http.get(f"/api/v1/sessions/{sid}", **_h(key)).json()
    assert detail["state"] == "created"
    assert detail["turn_count"] == 2 and detail["interrupt_count"] == 1 and detail["reconnect_count"] == 0
    first = detail["turns"][0]
    assert first["generated_text"] == "Hello there, how can I help?"
    assert first["heard_text"] == "Hello there"
    assert first["interrupted"] is True and first["interrupt_source"] == "client"
    assert first["stages_ms"]["stt"] == 100 and first["stages_ms"]["e2e"] == 900
    assert first["tool_calls"] == [{"name": "place_order", "status": "ok"}]
    assert detail["turns"][1]["breaches"] == ["e2e"]  # 2000 ms over the 1000 ms default budget
    assert detail["stage_avg_ms"]["stt"] == 200 and detail["stage_avg_ms"]["tts_ttfb"] is None


def test_it_lists_only_own_sessions_filtered_and_paginated(http, agent, owner_client, other_client):
    _, key = owner_client
    _, other_key = other_client
    own = [_create(http, key, {"agent": "support", "user_id": f"u{i}"}).json()["session_id"] for i in range(5)]
    _create(http, other_key, {"agent": "support", "user_id": "theirs"})
    VoiceSession.objects.filter(pk=own[0]).update(state=SessionState.ENDED)

    page = http.get("/api/v1/sessions?limit=2&offset=0", **_h(key)).json()
    assert page["count"] == 5 and page["limit"] == 2 and len(page["items"]) == 2
    rest = http.get("/api/v1/sessions?limit=10&offset=2", **_h(key)).json()
    seen = {i["session_id"] for i in page["items"]} | {i["session_id"] for i in rest["items"]}
    assert seen == set(own)
    ended = http.get("/api/v1/sessions?state=ended", **_h(key)).json()
    assert ended["count"] == 1 and ended["items"][0]["session_id"] == own[0]
    assert http.get("/api/v1/sessions?state=bogus", **_h(key)).status_code == 422
    assert http.get("/api/v1/sessions?limit=0", **_h(key)).status_code == 422


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "malformed_json"),
        (b'{"agent": "\xff"}', 400, "malformed_json"),
        ("[]", 422, "invalid_request"),
        ({"agent": "support"}, 422, "invalid_request"),
        ({"agent": 5, "user_id": "u"}, 422, "invalid_request"),
        ({"agent": "support", "user_id": 7}, 422, "invalid_request"),
        ({"agent": "support", "user_id": "u", "metadata": "x"}, 422, "invalid_request"),
        ({"agent": "support", "user_id": "u", "metadata": [1]}, 422, "invalid_request"),
        ({"agent": "support", "user_id": "u", "extra": 1}, 422, "invalid_request"),
        ({"agent": "support", "user_id": "has space"}, 422, "invalid_request"),
        ({"agent": "support", "user_id": ""}, 422, "invalid_request"),
        ({"agent": "nope", "user_id": "u"}, 422, "unknown_agent"),
        ({"agent": "support", "user_id": "u", "metadata": {"a": "nul\u0000"}}, 422, "invalid_metadata"),
        ('{"agent": "support", "user_id": "u", "metadata": {"a": NaN}}', 422, "invalid_metadata"),
    ],
)
def test_it_rejects_bad_input_with_a_json_error(http, agent, owner_client, body, status, code):
    _, key = owner_client
    response = _create(http, key, body)
    assert response.status_code == status, response.content
    error = response.json()
    assert error["code"] == code and error["message"] and "details" in error
    assert not VoiceSession.objects.exists()


@override_settings(SESSION_METADATA_MAX_BYTES=300)
def test_it_rejects_oversized_metadata(http, agent, owner_client):
    _, key = owner_client
    response = _create(http, key, {"agent": "support", "user_id": "u", "metadata": {"blob": "x" * 400}})
    assert response.status_code == 422
    assert response.json()["code"] == "metadata_too_large"
    assert response.json()["details"]["max_bytes"] == 300
    ok = _create(http, key, {"agent": "support", "user_id": "u", "metadata": {"blob": "x" * 200}})
    assert ok.status_code == 201


def test_it_rejects_an_agent_without_a_published_prompt(http, db, owner_client):
    _, key = owner_client
    Agent.objects.create(slug="draft-only", name="Draft")
    response = _create(http, key, {"agent": "draft-only", "user_id": "u"})
    assert response.status_code == 422 and response.json()["code"] == "agent_not_published"


def test_it_rejects_an_inactive_agent(http, agent, owner_client):
    _, key = owner_client
    Agent.objects.filter(pk=agent.pk).update(active=False)
    assert _create(http, key, {"agent": "support", "user_id": "u"}).json()["code"] == "unknown_agent"


def test_it_rejects_a_malformed_session_id(http, owner_client):
    _, key = owner_client
    for path in ("/api/v1/sessions/not-a-uuid", "/api/v1/sessions/123/reconnect"):
        response = http.get(path, **_h(key)) if "reconnect" not in path else http.post(path, **_h(key))
        assert response.status_code == 422, path
        assert response.json()["code"] == "invalid_request"


def test_it_returns_404_for_an_unknown_session(http, owner_client):
    _, key = owner_client
    response = http.get(f"/api/v1/sessions/{uuid.uuid4()}", **_h(key))
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@override_settings(SESSION_CREATE_RATE_PER_MINUTE=3)
def test_it_rate_limits_session_creation_per_client_with_retry_after(http, agent, owner_client, other_client):
    _, key = owner_client
    _, other_key = other_client
    codes = [_create(http, key, {"agent": "support", "user_id": "u"}).status_code for _ in range(3)]
    assert codes == [201, 201, 201]
    limited = _create(http, key, {"agent": "support", "user_id": "u"})
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    retry_after = int(limited["Retry-After"])
    assert 1 <= retry_after <= 120
    assert VoiceSession.objects.count() == 3
    # Another client has its own budget.
    assert _create(http, other_key, {"agent": "support", "user_id": "u"}).status_code == 201


def test_the_openapi_schema_and_docs_are_served(http):
    schema = http.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/reconnect",
        "/api/v1/sessions/{session_id}/interrupt",
        "/api/v1/sessions/{session_id}/end",
        "/api/v1/livekit/webhook",
        "/api/v1/browser/sessions",
    ):
        assert path in paths, path
    assert http.get("/api/v1/docs").status_code == 200


def test_creation_is_announced_to_the_dashboard_in_order(http, agent, owner_client, django_capture_on_commit_callbacks):
    from sessions_app import broadcast
    from tests.layer_listener import LayerListener

    with LayerListener(broadcast.DASHBOARD_GROUP) as listener:
        _, key = owner_client
        with django_capture_on_commit_callbacks(execute=True):
            sid = _create(http, key, {"agent": "support", "user_id": "u1"}).json()["session_id"]
        received = [listener.receive() for _ in range(3)]
    assert [(m["type"], m["seq"]) for m in received] == [("event.added", 1), ("event.added", 2), ("session.updated", 2)]
    assert all(m["session_id"] == sid for m in received)
    assert received[0]["event"]["type"] == "session.created"
    assert received[2]["session"]["state"] == "created" and received[2]["session"]["id"] == sid


@override_settings(SESSION_CREATE_RATE_PER_MINUTE=1)
def test_the_rate_limit_fails_open_when_redis_is_unreachable(http, agent, owner_client, monkeypatch):
    import redis

    from sessions_app import ratelimit

    def unreachable():
        raise redis.ConnectionError("redis is down")

    monkeypatch.setattr(ratelimit, "_redis", unreachable)
    _, key = owner_client
    codes = [_create(http, key, {"agent": "support", "user_id": "u"}).status_code for _ in range(3)]
    assert codes == [201, 201, 201]


def test_retry_after_is_the_wait_until_one_more_request_fits():
    from sessions_app.ratelimit import _retry_after

    # Current window full (3 of 3) at 30 s in: wait 30 s to the next window, then the old
    # window must decay until 3 * (1 - t) + 1 <= 3, i.e. t >= 1/3 of a window (20 s).
    assert _retry_after(limit=3, prev=0, cur=3, elapsed=0.5) == 50
    # Previous window full, current empty, 15 s in: 3 * (1 - t) + 1 <= 3 → t >= 20 s → 5 s more.
    assert _retry_after(limit=3, prev=3, cur=0, elapsed=0.25) == 5


def test_a_newly_published_prompt_is_pinned_at_once_despite_the_hot_cache(http, agent, owner_client):
    _, key = owner_client
    first = _create(http, key, {"agent": "support", "user_id": "u1"}).json()  # caches key and v1
    v2 = prompt_draft_create(agent=agent, instructions="Second version.")
    prompt_publish(version=v2)  # this process forgets its cache on save
    second = _create(http, key, {"agent": "support", "user_id": "u1"}).json()
    pinned = dict(VoiceSession.objects.values_list("id", "prompt_version_id"))
    assert pinned[uuid.UUID(first["session_id"])] != v2.pk
    assert pinned[uuid.UUID(second["session_id"])] == v2.pk


def test_a_deactivated_key_is_refused_at_once_despite_the_hot_cache(http, agent, owner_client):
    client, key = owner_client
    assert _create(http, key, {"agent": "support", "user_id": "u1"}).status_code == 201  # cached
    client.active = False
    client.save(update_fields=["active"])
    assert _create(http, key, {"agent": "support", "user_id": "u1"}).status_code == 401


def test_a_warm_creation_is_one_sql_statement_on_postgresql(http, agent, owner_client, django_assert_num_queries):
    """Key and prompt come from the hot cache; the session and its events are one INSERT."""
    from django.db import connection

    _, key = owner_client
    assert _create(http, key, {"agent": "support", "user_id": "u1"}).status_code == 201  # warms the cache
    # PostgreSQL: one statement, the live-session cap included; SQLite: savepoint, the cap count,
    # 2 INSERTs, release.
    expected = 1 if connection.vendor == "postgresql" else 5
    with django_assert_num_queries(expected):
        response = _create(http, key, {"agent": "support", "user_id": "u2", "metadata": {"plan": "gold"}})
    assert response.status_code == 201
    session = VoiceSession.objects.get(pk=response.json()["session_id"])
    assert (session.caller_id, session.metadata, session.last_seq) == ("u2", {"plan": "gold"}, 2)
    assert session.created_at is not None and session.updated_at is not None
    events = list(SessionEvent.objects.filter(session=session).order_by("seq"))
    assert [(e.seq, e.type) for e in events] == [(1, "session.created"), (2, "agent.dispatch_requested")]
    assert events[0].payload["prompt_version"] == session.prompt_version.number
    assert all(e.created_at is not None for e in events)


@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
def test_a_database_outage_answers_503_with_retry_after_never_500(http, agent, owner_client, monkeypatch, error):
    """PostgreSQL restarting (connection refused, or a connection it closed): the client is
    told to retry, with the API's error shape, and nothing is stored."""
    import django.db

    from sessions_app import services

    def down(**kwargs):
        raise getattr(django.db, error)("connection to server at 127.0.0.1 failed: Connection refused")

    monkeypatch.setattr(services, "session_create", down)
    response = _create(http, owner_client[1], {"agent": "support", "user_id": "c1"})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "database_unavailable"
    assert VoiceSession.objects.count() == 0
