"""POST /api/v1/livekit/webhook: verified with WebhookReceiver, de-duplicated, drives the session state."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest
from django.conf import settings
from django.test import Client, override_settings
from google.protobuf.json_format import MessageToJson
from livekit.api import AccessToken
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.webhook import WebhookEvent

from sessions_app.models import LiveKitWebhookEvent, SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_transition
from sessions_app.webhooks import webhook_event_process

pytestmark = pytest.mark.django_db
URL = "/api/v1/livekit/webhook"


@pytest.fixture(autouse=True)
def _eager(eager_celery):
    """The receiver queues `livekit_webhook_process`; run it in-process here."""
    yield


def _event(
    kind: str,
    room: str,
    identity: str = "",
    *,
    agent: bool = False,
    event_id: str | None = None,
    sid: str = "",
    joined_at_ms: int = 0,
    reason: int = 0,
) -> str:
    event = WebhookEvent(event=kind, id=event_id or f"EV_{uuid.uuid4().hex[:12]}", created_at=1_700_000_000)
    event.room.name = room
    event.room.turn_password = "turn-credential-of-the-room"
    if identity:
        event.participant.identity = identity
        event.participant.kind = ParticipantInfo.Kind.AGENT if agent else ParticipantInfo.Kind.STANDARD
        event.participant.sid = sid
        event.participant.joined_at_ms = joined_at_ms
        event.participant.disconnect_reason = reason
    return MessageToJson(event)


def _sign(body: str, *, secret: str | None = None, key: str | None = None) -> str:
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return (
        AccessToken(key or settings.LIVEKIT_API_KEY, secret or settings.LIVEKIT_API_SECRET).with_sha256(digest).to_jwt()
    )


def _post(http: Client, body: str, auth: str | None = None):
    # LiveKit mode for the delivery (the sessions were created in local mode, with no server).
    with override_settings(LIVEKIT_LOCAL_MODE=False, LIVEKIT_URL="ws://127.0.0.1:9"):
        return http.post(
            URL, data=body, content_type="application/webhook+json", HTTP_AUTHORIZATION=auth or _sign(body)
        )


@pytest.fixture
def http() -> Client:
    return Client()


@pytest.fixture
def session(http, agent, owner_client) -> VoiceSession:
    _, key = owner_client
    body = http.post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u1"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    ).json()
    return VoiceSession.objects.get(pk=body["session_id"])


def _deliver(http, django_capture_on_commit_callbacks, body: str):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(http, body)
    assert response.status_code == 200, response.content
    return response.json()


def test_it_rejects_a_bad_signature(http, session):
    body = _event("room_finished", session.room_name)
    response = _post(http, body, _sign(body, secret="not-the-configured-secret-at-all-0123456789"))
    assert response.status_code == 401 and response.json()["code"] == "invalid_webhook"
    assert not LiveKitWebhookEvent.objects.exists()


def test_it_rejects_a_token_from_another_api_key(http, session):
    body = _event("room_finished", session.room_name)
    assert _post(http, body, _sign(body, key="other-key")).status_code == 401


def test_it_rejects_a_body_that_does_not_match_the_signed_hash(http, session):
    signed = _event("participant_joined", session.room_name, "caller-u1")
    tampered = _event("room_finished", session.room_name)
    response = _post(http, tampered, _sign(signed))
    assert response.status_code == 401
    assert VoiceSession.objects.get(pk=session.pk).state == SessionState.CREATED


def test_it_rejects_a_missing_authorization(http, session):
    body = _event("room_finished", session.room_name)
    with override_settings(LIVEKIT_LOCAL_MODE=False):
        response = http.post(URL, data=body, content_type="application/webhook+json")
    assert response.status_code == 401


def test_in_local_mode_no_webhook_is_accepted_even_signed(http, session):
    """Issue 17, item 13: with no LiveKit server, nothing drives sessions from outside."""
    body = _event("room_finished", session.room_name)
    response = http.post(URL, data=body, content_type="application/webhook+json", HTTP_AUTHORIZATION=_sign(body))
    assert response.status_code == 404 and response.json()["code"] == "livekit_not_configured"
    session.refresh_from_db()
    assert session.state == SessionState.CREATED and not LiveKitWebhookEvent.objects.exists()


def test_it_accepts_a_bearer_prefixed_token_too(http, session, django_capture_on_commit_callbacks):
    body = _event("participant_joined", session.room_name, "caller-u1")
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(http, body, "Bearer " + _sign(body))
    assert response.status_code == 200


def test_a_caller_joining_makes_the_session_active(http, session, django_capture_on_commit_callbacks):
    ack = _deliver(
        http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1")
    )
    assert ack == {"received": True, "duplicate": False}
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE and session.started_at is not None
    assert LiveKitWebhookEvent.objects.get().processed_at is not None


def test_the_agent_joining_does_not_make_the_session_active(http, session, django_capture_on_commit_callbacks):
    _deliver(
        http,
        django_capture_on_commit_callbacks,
        _event("participant_joined", session.room_name, "agent-AJ_1", agent=True),
    )
    session.refresh_from_db()
    assert session.state == SessionState.CREATED
    assert SessionEvent.objects.filter(session=session, type="agent.joined").exists()


def test_another_participant_does_not_drive_the_state(http, session, django_capture_on_commit_callbacks):
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "supervisor-7"))
    session.refresh_from_db()
    assert session.state == SessionState.CREATED


@pytest.mark.parametrize("left", ["participant_left", "participant_connection_aborted"])
def test_a_caller_leaving_and_rejoining_counts_one_reconnect(http, session, django_capture_on_commit_callbacks, left):
    for kind in ("participant_joined", left, "participant_joined"):
        _deliver(http, django_capture_on_commit_callbacks, _event(kind, session.room_name, "caller-u1"))
        session.refresh_from_db()
        assert session.state == (SessionState.ACTIVE if kind == "participant_joined" else SessionState.RECONNECTING)
    assert session.reconnect_count == 1
    reconnect = SessionEvent.objects.get(session=session, type="session.reconnect")
    assert reconnect.payload["source"] == "webhook"


def test_a_rejoin_after_an_api_reconnect_is_not_counted_twice(
    http, session, owner_client, django_capture_on_commit_callbacks
):
    _, key = owner_client
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_left", session.room_name, "caller-u1"))
    assert http.post(f"/api/v1/sessions/{session.pk}/reconnect", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE
    assert session.reconnect_count == 1


def test_room_finished_ends_the_session(http, session, django_capture_on_commit_callbacks):
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    _deliver(http, django_capture_on_commit_callbacks, _event("room_finished", session.room_name))
    session.refresh_from_db()
    assert session.state == SessionState.ENDED and session.end_reason == "room_finished"


def test_a_replayed_event_changes_nothing(http, session, django_capture_on_commit_callbacks):
    joined = _event("participant_joined", session.room_name, "caller-u1")
    left = _event("participant_left", session.room_name, "caller-u1", event_id="EV_left_once")
    _deliver(http, django_capture_on_commit_callbacks, joined)
    _deliver(http, django_capture_on_commit_callbacks, left)
    session.refresh_from_db()
    state, last_seq = session.state, session.last_seq
    # The same event id again (LiveKit retries), even re-signed: acknowledged, not re-applied.
    ack = _deliver(http, django_capture_on_commit_callbacks, left)
    assert ack == {"received": True, "duplicate": True}
    assert _deliver(http, django_capture_on_commit_callbacks, joined)["duplicate"] is True
    session.refresh_from_db()
    assert (session.state, session.last_seq, session.reconnect_count) == (state, last_seq, 0)
    assert LiveKitWebhookEvent.objects.count() == 2


def test_processing_twice_is_a_no_op(http, session, django_capture_on_commit_callbacks):
    _deliver(
        http,
        django_capture_on_commit_callbacks,
        _event("participant_joined", session.room_name, "caller-u1", event_id="EV_x"),
    )
    session.refresh_from_db()
    seq = session.last_seq
    assert webhook_event_process(event_id="EV_x") is False
    session.refresh_from_db()
    assert session.last_seq == seq


def test_an_event_for_an_unknown_room_is_stored_and_ignored(http, db, django_capture_on_commit_callbacks):
    _deliver(http, django_capture_on_commit_callbacks, _event("room_finished", "vs-not-ours"))
    row = LiveKitWebhookEvent.objects.get()
    assert row.room_name == "vs-not-ours" and row.processed_at is not None


def test_events_for_a_finished_session_do_not_revive_it(http, session, django_capture_on_commit_callbacks):
    session_transition(session_id=session.pk, to_state=SessionState.ENDED)
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    session.refresh_from_db()
    assert session.state == SessionState.ENDED


def test_it_processes_inline_when_the_task_cannot_be_queued(
    http, session, django_capture_on_commit_callbacks, monkeypatch
):
    from sessions_app import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unavailable")

    monkeypatch.setattr(tasks.livekit_webhook_process, "delay", broker_down)
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE


def test_a_late_leave_of_the_old_connection_after_the_new_join_keeps_the_call_active(
    http, session, django_capture_on_commit_callbacks
):
    """A reconnecting client's new participant can join before the server reports the old
    one gone; the old one's participant_left must not mark the session reconnecting."""
    deliver = lambda body: _deliver(http, django_capture_on_commit_callbacks, body)  # noqa: E731
    deliver(_event("participant_joined", session.room_name, "caller-u1", sid="PA_old", joined_at_ms=1_000))
    deliver(_event("participant_joined", session.room_name, "caller-u1", sid="PA_new", joined_at_ms=9_000))
    deliver(_event("participant_left", session.room_name, "caller-u1", sid="PA_old", joined_at_ms=1_000))
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE and session.caller_connection == "PA_new"

    deliver(_event("participant_left", session.room_name, "caller-u1", sid="PA_new", joined_at_ms=9_000))
    session.refresh_from_db()
    assert session.state == SessionState.RECONNECTING


def test_an_agent_leaving_a_live_call_is_recorded_as_lost(http, session, django_capture_on_commit_callbacks):
    deliver = lambda body: _deliver(http, django_capture_on_commit_callbacks, body)  # noqa: E731
    deliver(_event("participant_joined", session.room_name, "agent-AJ_9", agent=True, sid="PA_a"))
    deliver(_event("participant_left", session.room_name, "agent-AJ_9", agent=True, sid="PA_a", reason=14))
    lost = SessionEvent.objects.get(session=session, type="agent.lost")
    assert lost.payload["identity"] == "agent-AJ_9" and lost.payload["reason"] == "CONNECTION_TIMEOUT"


def test_the_rooms_turn_credential_is_not_stored(http, session, django_capture_on_commit_callbacks):
    _deliver(http, django_capture_on_commit_callbacks, _event("participant_joined", session.room_name, "caller-u1"))
    row = LiveKitWebhookEvent.objects.get()
    assert "turn_password" not in row.payload["room"] and row.payload["room"]["name"] == session.room_name
