"""POST /api/v1/calls (issue 29): an API client has a line's agent call a number.

The dispatch goes to a local double of the LiveKit server's Twirp API (conftest.py); the
dialling itself is the agent job's (tests/telephony/test_outbound_calls.py for its pieces,
tests/livekit/test_phone_calls.py with a real SIP service and phone).
"""

from __future__ import annotations

import json

import pytest
from django.test import Client, override_settings

from agents_app.models import PhoneLine
from sessions_app.models import ApiClient, CallDirection, SessionChannel, SessionEvent, SessionState, VoiceSession

pytestmark = pytest.mark.django_db
LINE = "+15550100"
CALLEE = "+15550142"


@pytest.fixture
def line(agent) -> PhoneLine:
    return PhoneLine.objects.create(
        agent=agent,
        number=LINE,
        allowed_addresses=["203.0.113.10"],
        outbound_address="sip.carrier.example:5060",
        livekit_outbound_trunk_id="ST_out1",
    )


@pytest.fixture
def caller_key(owner_client) -> str:
    client, key = owner_client
    ApiClient.objects.filter(pk=client.pk).update(call_destinations=["+1555"])
    return key


def _place(key: str, **body):
    return Client().post(
        "/api/v1/calls",
        data=json.dumps({"line": LINE, "to": CALLEE, **body}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_a_call_is_a_phone_session_whose_agent_is_dispatched_to_dial(livekit_double, line, caller_key):
    response = _place(caller_key, metadata={"order": 7})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["channel"] == "phone" and body["direction"] == "outbound" and body["state"] == "created"
    assert body["caller_id"] == "+1•••••42" and CALLEE not in json.dumps(body)
    session = VoiceSession.objects.get(pk=body["session_id"])
    assert session.channel == SessionChannel.PHONE and session.direction == CallDirection.OUTBOUND
    assert session.caller_number == CALLEE and session.phone_line == line and session.metadata == {"order": 7}
    assert session.room_name.startswith(line.room_prefix + "out-")
    # The job creates the callee's SIP participant with this identity: the caller of the session.
    assert session.caller_participant.startswith("sip-")
    [dispatch] = livekit_double.dispatches
    assert dispatch.room == session.room_name and json.loads(dispatch.metadata) == {"session_id": str(session.pk)}
    created = SessionEvent.objects.get(session=session, type="session.created").payload
    assert created["direction"] == "outbound" and created["phone_line"] == LINE


def test_a_number_outside_the_keys_destinations_is_refused(livekit_double, line, caller_key):
    response = _place(caller_key, to="+442071234567")
    assert response.status_code == 403 and response.json()["code"] == "destination_not_allowed"
    assert not VoiceSession.objects.exists() and not livekit_double.dispatches


def test_a_key_without_destinations_places_no_calls(livekit_double, line, owner_client):
    response = _place(owner_client[1])
    assert response.status_code == 403 and response.json()["code"] == "destination_not_allowed"


@pytest.mark.parametrize("to", ["5550142", "+1 555 0142", "+0555014200", "tel:+15550142", ""])
def test_a_number_not_in_e164_form_is_refused(livekit_double, line, caller_key, to):
    response = _place(caller_key, to=to)
    assert response.status_code == 422, response.content
    assert not VoiceSession.objects.exists()


def test_a_line_that_does_not_place_calls_is_refused(livekit_double, line, caller_key):
    PhoneLine.objects.filter(pk=line.pk).update(outbound_address="")
    response = _place(caller_key)
    assert response.status_code == 422 and response.json()["code"] == "line_cannot_call"
    assert _place(caller_key, line="+15550199").json()["code"] == "line_cannot_call"


def test_a_line_whose_outbound_trunk_is_not_on_the_server_is_refused(livekit_double, line, caller_key):
    PhoneLine.objects.filter(pk=line.pk).update(livekit_outbound_trunk_id="", sync_error="the server said no")
    response = _place(caller_key)
    assert response.status_code == 502 and response.json()["code"] == "calls_unavailable"
    assert response.json()["details"]["sync_error"] == "the server said no"


def test_the_local_transport_places_no_calls(line, caller_key):
    with override_settings(LIVEKIT_LOCAL_MODE=True):
        response = _place(caller_key)
    assert response.status_code == 502 and response.json()["code"] == "calls_unavailable"


def test_one_live_call_per_key_and_number(livekit_double, line, caller_key):
    assert _place(caller_key).status_code == 201
    second = _place(caller_key)
    assert second.status_code == 409 and second.json()["code"] == "call_in_progress"
    VoiceSession.objects.update(state=SessionState.FAILED)
    assert _place(caller_key).status_code == 201


def test_a_refused_dispatch_fails_the_call(livekit_double, line, caller_key):
    livekit_double.fail_with = 503
    response = _place(caller_key)
    assert response.status_code == 502 and response.json()["code"] == "dispatch_failed"
    assert VoiceSession.objects.get().state == SessionState.FAILED


def test_calls_are_rate_limited_per_key(livekit_double, line, caller_key):
    with override_settings(CALL_PLACE_RATE_PER_MINUTE=1):
        assert _place(caller_key).status_code == 201
        VoiceSession.objects.update(state=SessionState.FAILED)
        response = _place(caller_key)
    assert response.status_code == 429, response.content


def test_only_client_keys_place_calls(livekit_double, line, agent_scope_client):
    ApiClient.objects.filter(pk=agent_scope_client[0].pk).update(call_destinations=["+1555"])
    assert _place(agent_scope_client[1]).status_code in (401, 403)
