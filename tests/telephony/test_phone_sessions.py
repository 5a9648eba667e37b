"""A phone call is a voice session (issue 29): opened by the agent's job, masked for staff,
keyed by the caller's number, ended when the caller hangs up."""

from __future__ import annotations

import pytest
from django.test import Client

from agents_app.models import PhoneLine
from sessions_app.models import SessionChannel, SessionEvent, SessionState, VoiceSession, mask_phone_number
from sessions_app.selectors import tool_call_identity
from sessions_app.services import phone_session_open
from tests.sessions_app.test_webhooks import _deliver, _event
from voiceplatform.errors import InvalidInput

pytestmark = pytest.mark.django_db
ROOM = "phone-1-_+15557654321_abcDEF"


@pytest.fixture
def line(agent) -> PhoneLine:
    return PhoneLine.objects.create(agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"])


def _open(line: PhoneLine, room: str = ROOM, number: str = "+15557654321") -> VoiceSession:
    return phone_session_open(
        line_id=line.pk,
        room_name=room,
        caller_number=number,
        participant_identity=f"sip_{number}",
        connection="PA_sip1",
        call_id="SCL_abc",
    )


def test_a_number_in_a_room_name_is_masked_for_logs_and_staff():
    from sessions_app.models import mask_room_name

    assert mask_room_name(ROOM) == "phone-1-_+1••••••••21_abcDEF"
    # Other rooms keep their names: a session's hex id may hold a run of digits.
    for room in ("vs-3f25123456789e04f8911d3", "phone-2-out-1234567890abcdef"):
        assert mask_room_name(room) == room


def test_mask_keeps_only_the_ends_of_a_number():
    assert mask_phone_number("+15557654321") == "+1••••••••21"
    assert mask_phone_number("+4412") == "•••••"


def test_a_phone_call_opens_an_active_session_with_the_published_prompt(line, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        session = _open(line)
    assert session.channel == SessionChannel.PHONE and session.phone_line == line
    assert session.state == SessionState.ACTIVE and session.started_at is not None
    assert session.caller_id == "+1••••••••21" and session.caller_number == "+15557654321"
    assert session.caller_participant == "sip_+15557654321" and session.caller_connection == "PA_sip1"
    assert session.prompt_version.number == 1 and session.agent == line.agent
    created = SessionEvent.objects.get(session=session, type="session.created").payload
    assert created["source"] == "phone" and created["phone_line"] == "+15550100"
    assert "+15557654321" not in str(created)  # staff see the mask only
    assert SessionEvent.objects.filter(session=session, type="caller.joined").exists()


def test_a_second_job_of_the_same_call_finds_the_same_session(line):
    first = _open(line)
    assert _open(line).pk == first.pk
    assert VoiceSession.objects.count() == 1


def test_an_inactive_line_or_an_unpublished_agent_is_refused(line):
    line.active = False
    line.save()
    with pytest.raises(InvalidInput):
        _open(line)
    line.active = True
    line.save()
    line.agent.active = False
    line.agent.save()
    with pytest.raises(InvalidInput) as error:
        _open(line)
    assert error.value.code == "agent_not_published"


def test_tools_know_a_phone_caller_by_their_number(line):
    session = _open(line)
    assert tool_call_identity(session_id=session.pk)["caller"] == "phone:+15557654321"


def test_the_caller_hanging_up_ends_the_phone_session(line, django_capture_on_commit_callbacks, eager_celery):
    session = _open(line)
    http = Client()
    # The SIP participant's leave (webhook) ends the call: a phone caller does not rejoin.
    _deliver(
        http, django_capture_on_commit_callbacks, _event("participant_left", ROOM, "sip_+15557654321", sid="PA_sip1")
    )
    session.refresh_from_db()
    assert session.state == SessionState.ENDED and session.end_reason == "caller_hung_up"


def test_someone_else_leaving_a_phone_call_does_not_end_it(line, django_capture_on_commit_callbacks, eager_celery):
    session = _open(line)
    _deliver(Client(), django_capture_on_commit_callbacks, _event("participant_left", ROOM, "supervisor-1"))
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE


def test_staff_see_the_masked_number_only(line, admin_client):
    session = _open(line)
    detail = admin_client.get(f"/dashboard/api/sessions/{session.pk}").json()
    assert detail["session"]["caller_id"] == "+1••••••••21" and detail["session"]["channel"] == "phone"
    assert detail["session"]["room"] == "phone-1-_+1••••••••21_abcDEF"
    assert "15557654321" not in str(detail)
    admin_page = admin_client.get(f"/admin/sessions_app/voicesession/{session.pk}/change/").content.decode()
    assert "+1••••••••21" in admin_page and "15557654321" not in admin_page
