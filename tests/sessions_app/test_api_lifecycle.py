"""Reconnect, interrupt and end: same room, counted, forwarded to the agent's group, 409 when final."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.test import Client
from livekit.api import TokenVerifier

from sessions_app import broadcast
from sessions_app.metrics import RECONNECTS
from sessions_app.models import SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_transition
from tests.layer_listener import LayerListener

pytestmark = pytest.mark.django_db


def _h(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def http() -> Client:
    return Client()


@pytest.fixture
def session_and_key(http, agent, owner_client):
    _, key = owner_client
    body = http.post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u1"}),
        content_type="application/json",
        **_h(key),
    ).json()
    return body, key


def _verify(token: str):
    return TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)


def test_reconnect_gives_a_fresh_token_for_the_same_room_and_session(
    http, session_and_key, django_capture_on_commit_callbacks
):
    created, key = session_and_key
    sid = created["session_id"]
    session_transition(session_id=sid, to_state=SessionState.ACTIVE, reason="caller_joined")
    before = RECONNECTS.labels(agent="support")._value.get()
    with django_capture_on_commit_callbacks(execute=True):
        with_cb = http.post(f"/api/v1/sessions/{sid}/reconnect", **_h(key))
    assert with_cb.status_code == 200, with_cb.content
    body = with_cb.json()
    assert body["session_id"] == sid and body["room"] == created["room"]
    assert body["reconnect_count"] == 1 and body["state"] == "reconnecting"
    claims = _verify(body["token"])
    assert claims.video.room == created["room"] and claims.identity == "caller-u1"
    session = VoiceSession.objects.get(pk=sid)
    assert session.reconnect_count == 1 and session.state == SessionState.RECONNECTING
    types = list(SessionEvent.objects.filter(session_id=sid).order_by("seq").values_list("type", flat=True))
    assert types[-2:] == ["session.reconnect", "session.state_changed"]
    # Observed after commit only (the callbacks ran above).
    assert RECONNECTS.labels(agent="support")._value.get() == before + 1


def test_reconnect_keeps_created_and_reconnecting_states(http, session_and_key):
    created, key = session_and_key
    sid = created["session_id"]
    assert http.post(f"/api/v1/sessions/{sid}/reconnect", **_h(key)).json()["state"] == "created"
    session_transition(session_id=sid, to_state=SessionState.ACTIVE)
    session_transition(session_id=sid, to_state=SessionState.RECONNECTING)
    body = http.post(f"/api/v1/sessions/{sid}/reconnect", **_h(key)).json()
    assert body["state"] == "reconnecting" and body["reconnect_count"] == 2


@pytest.mark.parametrize("final", [SessionState.ENDED, SessionState.FAILED])
def test_reconnect_is_refused_once_the_session_is_final(http, session_and_key, final):
    created, key = session_and_key
    session_transition(session_id=created["session_id"], to_state=final)
    response = http.post(f"/api/v1/sessions/{created['session_id']}/reconnect", **_h(key))
    assert response.status_code == 409 and response.json()["code"] == "session_final"
    assert VoiceSession.objects.get(pk=created["session_id"]).reconnect_count == 0


def test_interrupt_records_an_event_and_reaches_the_agent_control_group(
    http, session_and_key, django_capture_on_commit_callbacks
):
    created, key = session_and_key
    sid = created["session_id"]
    listener = LayerListener(broadcast.agent_control_group(sid))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = http.post(f"/api/v1/sessions/{sid}/interrupt", **_h(key))
        assert response.status_code == 202, response.content
        seq = response.json()["event_seq"]
        message = listener.receive()
    finally:
        listener.close()
    assert message == {"type": "agent.interrupt", "session_id": sid, "source": "client", "event_seq": seq}
    event = SessionEvent.objects.get(session_id=sid, seq=seq)
    assert event.type == "interrupt.requested" and event.payload == {"source": "client"}
    # The agent counts interrupts when speech is actually cut, not the API.
    assert VoiceSession.objects.get(pk=sid).interrupt_count == 0


def test_interrupt_is_refused_once_the_session_is_final(http, session_and_key):
    created, key = session_and_key
    session_transition(session_id=created["session_id"], to_state=SessionState.ENDED)
    response = http.post(f"/api/v1/sessions/{created['session_id']}/interrupt", **_h(key))
    assert response.status_code == 409 and response.json()["code"] == "session_final"


def test_end_ends_the_session_and_tells_the_agent(http, session_and_key, django_capture_on_commit_callbacks):
    created, key = session_and_key
    sid = created["session_id"]
    listener = LayerListener(broadcast.agent_control_group(sid))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = http.post(f"/api/v1/sessions/{sid}/end", **_h(key))
        assert response.status_code == 200, response.content
        message = listener.receive()
    finally:
        listener.close()
    assert response.json()["state"] == "ended" and response.json()["end_reason"] == "client_request"
    assert message == {"type": "agent.end", "session_id": sid, "reason": "client_request"}
    session = VoiceSession.objects.get(pk=sid)
    assert session.state == SessionState.ENDED and session.ended_at is not None
    change = SessionEvent.objects.filter(session_id=sid, type="session.state_changed").latest("seq")
    assert change.payload["from"] == "created" and change.payload["to"] == "ended"


def test_end_twice_is_a_409_with_a_message(http, session_and_key):
    created, key = session_and_key
    sid = created["session_id"]
    assert http.post(f"/api/v1/sessions/{sid}/end", **_h(key)).status_code == 200
    again = http.post(f"/api/v1/sessions/{sid}/end", **_h(key))
    assert again.status_code == 409
    assert again.json()["code"] == "session_final" and "ended" in again.json()["message"]


def test_every_transition_writes_a_gapless_event_sequence(http, session_and_key):
    created, key = session_and_key
    sid = created["session_id"]
    session_transition(session_id=sid, to_state=SessionState.ACTIVE)
    http.post(f"/api/v1/sessions/{sid}/reconnect", **_h(key))
    http.post(f"/api/v1/sessions/{sid}/interrupt", **_h(key))
    http.post(f"/api/v1/sessions/{sid}/end", **_h(key))
    seqs = list(SessionEvent.objects.filter(session_id=sid).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert VoiceSession.objects.get(pk=sid).last_seq == len(seqs)
