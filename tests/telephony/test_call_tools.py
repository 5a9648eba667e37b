"""The telephony built-ins (issue 29): the agent presses keys (DTMF) and transfers the caller.

Both act on the live call through the controls its agent job registers
(tools_app/call_controls.py); here a recording double stands in for the job's controls
(agents_app/runtime/worker/phone_controls.py, which the livekit tier drives for real).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from agents_app.models import PhoneLine
from sessions_app.models import SessionEvent, SessionState
from sessions_app.services import phone_session_open, session_create
from tests.sessions_app.test_webhooks import _deliver, _event
from tools_app import call_controls
from tools_app.call_controls import keypad_digits
from tools_app.ledger import InvocationIndeterminate, request_fingerprint
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind
from tools_app.services import tool_invoke

pytestmark = pytest.mark.django_db
ROOM = "phone-1-_+15557654321_abcDEF"
CALLER = "sip_+15557654321"


class Controls:
    """What the job's controls were asked to do; `fail` makes the next transfer fail."""

    def __init__(self) -> None:
        self.digits: list[str] = []
        self.transfers: list[str] = []
        self.fail = ""
        self.threads: set[str] = set()

    def send_digits(self, digits: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.digits.append(digits)

    def transfer(self, transfer_to: str) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.transfers.append(transfer_to)


@pytest.fixture
def line(agent) -> PhoneLine:
    return PhoneLine.objects.create(
        agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"], transfer_to="+15550199"
    )


@pytest.fixture
def call(line):
    session = phone_session_open(
        line_id=line.pk,
        room_name=ROOM,
        caller_number="+15557654321",
        participant_identity=CALLER,
        connection="PA_sip1",
    )
    controls = Controls()
    call_controls.register(str(session.pk), controls)
    yield session, controls
    call_controls.unregister(str(session.pk), controls)


def _tool(name: str, **fields) -> ToolDefinition:
    return ToolDefinition.objects.create(
        name=name, description=name, kind=ToolKind.BUILTIN, builtin_name=name, parameters={}, **fields
    )


def _invoke(tool: ToolDefinition, session, key: str, **arguments):
    return tool_invoke(tool=tool, arguments=arguments, key=key, scope=str(session.pk), session_id=str(session.pk))


@pytest.mark.parametrize(
    ("said", "keys"),
    [
        ("Please press 1, 2, 3 on the keypad.", "123"),
        ("press one two then hash", "12#"),
        ("Press nine, star, five, pound.", "9*5#"),
        ("zero", "0"),
        ("nothing to press here", ""),
    ],
)
def test_keypad_keys_are_read_from_digits_and_words(said, keys):
    assert keypad_digits(said) == keys


def test_the_agent_presses_keys_on_its_call(call):
    session, controls = call
    tool = _tool("send_keypad_digits")
    outcome = _invoke(tool, session, "k1", digits="1, 2 and hash")
    assert outcome.status == InvocationStatus.SUCCEEDED, outcome.error
    assert controls.digits == ["12#"] and outcome.result["digits"] == "12#"
    # The same call again (a retried LLM turn) presses nothing twice.
    assert _invoke(tool, session, "k1", digits="1, 2 and hash").replayed
    assert controls.digits == ["12#"]


@pytest.mark.parametrize("digits", ["", "hello", "1" * 33])
def test_keys_that_a_keypad_cannot_send_are_refused(call, digits):
    session, controls = call
    outcome = _invoke(_tool("send_keypad_digits"), session, "k1", digits=digits)
    assert outcome.status == InvocationStatus.FAILED and "keys" in outcome.error
    assert controls.digits == []


def test_no_call_controls_no_keys(line, agent):
    # A browser call (or a tool invoked through the API, away from the call's job).
    session, _ = session_create(agent_slug=agent.slug, caller_id="web-1")
    outcome = _invoke(_tool("send_keypad_digits"), session, "k1", digits="1")
    assert outcome.status == InvocationStatus.FAILED and "only during a phone call" in outcome.error


def test_a_transfer_goes_to_the_lines_number_once(call):
    session, controls = call
    tool = _tool("transfer_call")
    # The model cannot choose where: any argument but the reason is ignored.
    outcome = _invoke(tool, session, "t1", reason="asked for a person", to="+19005550000")
    assert outcome.status == InvocationStatus.SUCCEEDED, outcome.error
    assert controls.transfers == ["+15550199"]
    event = SessionEvent.objects.get(session=session, type="call.transfer").payload
    assert event == {"to": "+1•••••99", "reason": "asked for a person"}
    # Replayed with its key: no second transfer; a new call of the tool: refused.
    assert _invoke(tool, session, "t1", reason="asked for a person", to="+19005550000").replayed
    second = _invoke(tool, session, "t2")
    assert second.status == InvocationStatus.FAILED and "already been transferred" in second.error
    assert controls.transfers == ["+15550199"]


def test_a_failed_transfer_is_recorded_and_may_be_tried_again(call):
    session, controls = call
    tool = _tool("transfer_call")
    controls.fail = "SIP 486 Busy Here"
    outcome = _invoke(tool, session, "t1")
    assert outcome.status == InvocationStatus.FAILED and "did not go through" in outcome.error
    failed = SessionEvent.objects.get(session=session, type="call.transfer_failed").payload
    assert "486" in failed["error"]
    controls.fail = ""
    assert _invoke(tool, session, "t2").status == InvocationStatus.SUCCEEDED
    assert controls.transfers == ["+15550199"]


def test_a_line_without_a_transfer_number_transfers_nobody(call, line):
    session, controls = call
    PhoneLine.objects.filter(pk=line.pk).update(transfer_to="")
    outcome = _invoke(_tool("transfer_call"), session, "t1")
    assert outcome.status == InvocationStatus.FAILED and "no transfer number" in outcome.error
    assert controls.transfers == [] and not SessionEvent.objects.filter(type="call.transfer").exists()


def test_a_browser_call_is_never_transferred(agent):
    session, _ = session_create(agent_slug=agent.slug, caller_id="web-1")
    outcome = _invoke(_tool("transfer_call"), session, "t1")
    assert outcome.status == InvocationStatus.FAILED and "only during a phone call" in outcome.error


def test_a_transfer_cut_short_by_a_crash_is_never_made_again(call):
    """Not atomic: the row of a transfer whose job died (its lease ran out after an attempt)
    becomes indeterminate, and the transfer is not asked for again."""
    session, controls = call
    tool = _tool("transfer_call")
    ToolInvocation.objects.create(
        tool=tool,
        tool_name=tool.name,
        scope=str(session.pk),
        key="t1",
        fingerprint=request_fingerprint(tool_name=tool.name, arguments={}),
        arguments={},
        session_id=session.pk,
        status=InvocationStatus.RUNNING,
        attempts=1,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    with pytest.raises(InvocationIndeterminate):
        _invoke(tool, session, "t1")
    assert controls.transfers == []


def test_the_caller_leaving_after_a_transfer_ends_the_session_as_transferred(
    call, django_capture_on_commit_callbacks, eager_celery
):
    session, _ = call
    assert _invoke(_tool("transfer_call"), session, "t1").status == InvocationStatus.SUCCEEDED
    _deliver(Client(), django_capture_on_commit_callbacks, _event("participant_left", ROOM, CALLER, sid="PA_sip1"))
    session.refresh_from_db()
    assert session.state == SessionState.ENDED and session.end_reason == "transferred"


def test_a_transfer_target_is_a_number_or_a_sip_uri(agent):
    from django.core.exceptions import ValidationError

    for good in ("+15550199", "sip:desk@pbx.example.com", "sip:desk@10.0.0.5:5070"):
        PhoneLine(agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"], transfer_to=good).full_clean()
    for bad in ("15550199", "sip:desk@pbx.example.com;transport=tcp", "http://x", "sip:@pbx"):
        with pytest.raises(ValidationError) as error:
            PhoneLine(agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"], transfer_to=bad).full_clean()
        assert "transfer_to" in error.value.message_dict
