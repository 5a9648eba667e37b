"""A phone call's session starts at the first ring (issue 29): the SIP caller's
`participant_joined` webhook opens it, so a call that no agent answers fails with a reason
(`agent_unavailable`) and is hung up, instead of leaving no trace but LiveKit's logs."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client, override_settings
from google.protobuf.json_format import MessageToJson
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.webhook import WebhookEvent

from agents_app.models import PhoneLine
from sessions_app import lifecycle
from sessions_app.models import AgentStatus, SessionEvent, SessionState, VoiceSession
from sessions_app.services import phone_session_open
from tests.sessions_app.test_webhooks import _deliver

pytestmark = pytest.mark.django_db
NUMBER = "+15557654321"
IDENTITY = f"sip_{NUMBER}"


@pytest.fixture
def eager_celery(eager_celery, monkeypatch):
    """The agent-join checks are recorded, not run at once (as in test_session_lifecycle.py)."""
    scheduled: list[tuple[str, int]] = []
    monkeypatch.setattr(
        lifecycle, "_join_check_after_commit", lambda session_id, attempt: scheduled.append((str(session_id), attempt))
    )
    return scheduled


@pytest.fixture
def line(agent) -> PhoneLine:
    return PhoneLine.objects.create(agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"])


def _room(line: PhoneLine) -> str:
    return f"{line.room_prefix}_{NUMBER}_abcDEF"


def _sip_joined(room: str, *, kind: int = ParticipantInfo.Kind.SIP) -> str:
    event = WebhookEvent(event="participant_joined", id=f"EV_{uuid.uuid4().hex[:12]}", created_at=1_700_000_000)
    event.room.name = room
    event.participant.identity = IDENTITY
    event.participant.kind = kind
    event.participant.sid = "PA_sip1"
    event.participant.attributes["sip.phoneNumber"] = NUMBER
    event.participant.attributes["sip.callID"] = "SCL_abc"
    return MessageToJson(event)


def _ring(line: PhoneLine, django_capture_on_commit_callbacks, **kwargs) -> VoiceSession | None:
    _deliver(Client(), django_capture_on_commit_callbacks, _sip_joined(_room(line), **kwargs))
    return VoiceSession.objects.filter(room_name=_room(line)).first()


def test_the_first_ring_opens_the_session_and_awaits_the_agent(
    line, livekit_double, eager_celery, django_capture_on_commit_callbacks
):
    session = _ring(line, django_capture_on_commit_callbacks)
    assert session is not None and session.channel == "phone" and session.phone_line == line
    assert session.caller_number == NUMBER and session.caller_id == "+1••••••••21"
    assert session.caller_participant == IDENTITY and session.state == SessionState.ACTIVE
    assert session.agent_status == AgentStatus.DISPATCHED
    assert eager_celery == [(str(session.pk), 1)], "the agent's join is awaited"
    # The dispatch rule's job then finds the same session and serves it.
    assert (
        phone_session_open(
            line_id=line.pk,
            room_name=_room(line),
            caller_number=NUMBER,
            participant_identity=IDENTITY,
            connection="PA_sip1",
        ).pk
        == session.pk
    )
    assert VoiceSession.objects.count() == 1
    assert lifecycle.session_agent_joined(session_id=session.pk, identity="agent-AJ_1", job_id="AJ_1", source="job")
    assert lifecycle.session_agent_join_check(session_id=session.pk, dispatch=1) == "joined"


def test_a_call_no_agent_answers_fails_and_is_hung_up(
    line, livekit_double, eager_celery, django_capture_on_commit_callbacks
):
    session = _ring(line, django_capture_on_commit_callbacks)
    with override_settings(AGENT_DISPATCH_ATTEMPTS=1), django_capture_on_commit_callbacks(execute=True):
        assert lifecycle.session_agent_join_check(session_id=session.pk, dispatch=1) == "unavailable"
    session.refresh_from_db()
    assert session.state == SessionState.FAILED and session.end_reason == "agent_unavailable"
    assert livekit_double.deleted_rooms == [_room(line)], "the caller is not left ringing"
    assert SessionEvent.objects.filter(session=session, type="agent.unavailable").exists()


def test_a_job_that_opened_the_session_first_is_not_disturbed(
    line, livekit_double, eager_celery, django_capture_on_commit_callbacks
):
    first = phone_session_open(
        line_id=line.pk,
        room_name=_room(line),
        caller_number=NUMBER,
        participant_identity=IDENTITY,
        connection="PA_sip1",
    )
    session = _ring(line, django_capture_on_commit_callbacks)
    assert session.pk == first.pk and session.state == SessionState.ACTIVE
    assert eager_celery == [] and VoiceSession.objects.count() == 1


def test_only_a_sip_participant_in_a_lines_room_opens_a_session(
    line, livekit_double, eager_celery, django_capture_on_commit_callbacks
):
    assert _ring(line, django_capture_on_commit_callbacks, kind=ParticipantInfo.Kind.STANDARD) is None
    _deliver(Client(), django_capture_on_commit_callbacks, _sip_joined("some-other-room"))
    _deliver(Client(), django_capture_on_commit_callbacks, _sip_joined(f"{line.room_prefix}out-0123"))
    assert not VoiceSession.objects.exists()


def test_a_call_to_an_inactive_line_opens_no_session(
    line, livekit_double, eager_celery, django_capture_on_commit_callbacks
):
    PhoneLine.objects.filter(pk=line.pk).update(active=False)
    assert _ring(line, django_capture_on_commit_callbacks) is None
