"""Explicit agent dispatch with a LiveKit server, against a local HTTP double of its Twirp API.

The real livekit-api client makes the calls; the double checks each request's JWT with
livekit-api's TokenVerifier and the configured key/secret, as a LiveKit server would.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client, override_settings
from livekit.api import TokenVerifier

from sessions_app.models import SessionEvent, SessionState, VoiceSession
from tests.sessions_app.conftest import AGENT_NAME, KEY, SECRET

pytestmark = pytest.mark.django_db


def _create(key: str):
    return Client().post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u1"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_it_dispatches_the_agent_by_name_with_the_session_id(livekit_double, agent, owner_client):
    _, key = owner_client
    response = _create(key)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["url"] == f"ws://127.0.0.1:{livekit_double.port}"
    assert livekit_double.rejected == 0
    [dispatch] = livekit_double.dispatches
    assert dispatch.agent_name == AGENT_NAME
    assert dispatch.room == body["room"]
    assert json.loads(dispatch.metadata) == {"session_id": body["session_id"]}
    claims = TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.video.room == body["room"] and not claims.video.room_admin
    event = SessionEvent.objects.get(session_id=body["session_id"], type="agent.dispatch_requested")
    assert event.payload == {"mode": "livekit", "agent_name": AGENT_NAME, "dispatch_id": "AD_1", "attempt": 1}


@pytest.mark.parametrize("status", [500, 503])
def test_a_failed_dispatch_fails_the_session_and_returns_no_token(livekit_double, agent, owner_client, status):
    _, key = owner_client
    livekit_double.fail_with = status
    response = _create(key)
    assert response.status_code == 502
    error = response.json()
    assert error["code"] == "dispatch_failed" and "token" not in error["details"]
    session = VoiceSession.objects.get(pk=error["details"]["session_id"])
    assert session.state == SessionState.FAILED and session.end_reason == "dispatch_failed"


def test_a_server_that_refuses_our_signature_is_a_dispatch_failure(livekit_double, agent, owner_client):
    _, key = owner_client
    with override_settings(LIVEKIT_API_SECRET="a-different-secret-0123456789-abcdefghij"):
        response = _create(key)
    assert response.status_code == 502 and livekit_double.rejected == 1
    assert VoiceSession.objects.get().state == SessionState.FAILED


def test_an_unreachable_server_is_a_dispatch_failure(agent, owner_client):
    with override_settings(
        LIVEKIT_URL="ws://127.0.0.1:9", LIVEKIT_LOCAL_MODE=False, LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET
    ):
        response = _create(owner_client[1])
    assert response.status_code == 502 and response.json()["code"] == "dispatch_failed"


def test_ending_a_session_deletes_its_room(livekit_double, agent, owner_client):
    _, key = owner_client
    body = _create(key).json()
    response = Client().post(f"/api/v1/sessions/{body['session_id']}/end", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert livekit_double.deleted_rooms == [body["room"]]
    assert livekit_double.rejected == 0
