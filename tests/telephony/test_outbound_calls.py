"""Placing calls (issue 29): a line's outbound trunk, the job's dial and its outcomes, and
what the webhooks of a ringing call do. POST /calls itself: tests/sessions_app/test_api_calls.py;
a real call answered by a second phone: tests/livekit/test_phone_calls.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client, override_settings
from livekit import api

from agents_app.models import PhoneLine
from agents_app.runtime.worker import job_session
from agents_app.runtime.worker.config import load_job_config
from agents_app.services import phone_line_sync, phone_lines_sync_all
from sessions_app import livekit_server
from sessions_app.models import (
    ApiClient,
    CallDirection,
    SessionChannel,
    SessionEvent,
    SessionState,
    VoiceSession,
    call_destination_allowed,
)
from sessions_app.services import session_transition
from tests.sessions_app.test_webhooks import _deliver, _event
from tests.telephony.test_phone_lines import LIVEKIT, _form, _line

pytestmark = pytest.mark.django_db
CALLEE = "+15550142"


def _placed(line: PhoneLine, state: str = SessionState.CREATED, room: str = "0123") -> VoiceSession:
    session = VoiceSession.objects.create(
        caller_id="+1•••••42",
        caller_number=CALLEE,
        caller_participant="sip-0123456789abcdef",
        channel=SessionChannel.PHONE,
        direction=CallDirection.OUTBOUND,
        phone_line=line,
        room_name=f"{line.room_prefix}out-{room}",
        agent=line.agent,
        prompt_version=line.agent.prompt_versions.get(number=1),
    )
    if state != SessionState.CREATED:
        session_transition(session_id=session.pk, to_state=state)
    return session


# --- the line's outbound trunk --------------------------------------------------------------


def test_an_outbound_trunk_dials_from_the_lines_number_through_its_server():
    spec = livekit_server.SipLineSpec(
        line_id=3,
        number="+15550100",
        allowed_addresses=("203.0.113.10",),
        auth_username="",
        auth_password="",
        room_prefix="phone-3-",
        outbound_address="sip.carrier.example:5060",
        outbound_username="acct",
        outbound_password="carrier-secret-1",
    )
    trunk = spec.outbound_trunk()
    assert trunk.address == "sip.carrier.example:5060" and list(trunk.numbers) == ["+15550100"]
    assert (trunk.auth_username, trunk.auth_password) == ("acct", "carrier-secret-1")
    assert livekit_server.marked_line_id(trunk.metadata) == 3  # the platform's, for the reconciliation


@override_settings(**LIVEKIT)
def test_a_line_with_an_outbound_server_gets_an_outbound_trunk_and_loses_it_with_the_server(agent, sip):
    line = _line(agent, outbound_address="sip.carrier.example")
    assert phone_line_sync(line=line) == ""
    line.refresh_from_db()
    assert line.livekit_outbound_trunk_id == "ST_OUT_1" and line.places_calls
    assert sip.applied[-1].outbound_address == "sip.carrier.example"
    line.outbound_address = ""
    line.save()
    assert phone_line_sync(line=line) == ""
    # The platform asked with the known outbound id and no server: the trunk is deleted.
    assert sip.applied[-1].outbound_trunk_id == "ST_OUT_1" and not sip.applied[-1].outbound_address
    line.refresh_from_db()
    assert line.livekit_outbound_trunk_id == "" and not line.places_calls


@override_settings(**LIVEKIT)
def test_the_reconciliation_keeps_outbound_trunks_of_lines(agent, sip):
    line = _line(agent, outbound_address="sip.carrier.example")
    phone_line_sync(line=line)
    line.refresh_from_db()
    mark = json.dumps({livekit_server.PHONE_LINE_MARK: line.pk})
    sip.listed = (
        [
            api.SIPInboundTrunkInfo(sip_trunk_id=line.livekit_trunk_id, metadata=mark),
            api.SIPOutboundTrunkInfo(sip_trunk_id=line.livekit_outbound_trunk_id, metadata=mark),
            api.SIPOutboundTrunkInfo(sip_trunk_id="ST_orphan", metadata='{"voiceplatform.phone_line": 999}'),
        ],
        [],
    )
    report = phone_lines_sync_all()
    assert report["removed"] == ["ST_orphan"]


def test_outbound_credentials_come_in_pairs_and_need_a_server(agent):
    with pytest.raises(ValidationError) as error:
        _line(agent, outbound_address="sip.carrier.example", outbound_username="acct").full_clean()
    assert "outbound_password" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        _line(agent, number="+15550101", outbound_username="acct", outbound_password="x" * 12).full_clean()
    assert "outbound_address" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        _line(agent, number="+15550102", outbound_address="sip://carrier/ path").full_clean()
    assert "outbound_address" in error.value.message_dict


def test_the_outbound_password_is_write_only(agent):
    line = _line(
        agent, outbound_address="sip.carrier.example", outbound_username="acct", outbound_password="old-secret-12"
    )
    fields = {
        "allowed_addresses": "203.0.113.10",
        "outbound_address": "sip.carrier.example",
        "outbound_username": "acct",
    }
    kept = _form(agent, line, **fields, outbound_password="")
    assert "old-secret-12" not in str(kept)
    assert kept.is_valid(), kept.errors
    assert kept.save().outbound_password == "old-secret-12"
    cleared = _form(agent, line, **fields, clear_outbound_auth="on")
    assert cleared.is_valid(), cleared.errors
    saved = cleared.save()
    assert (saved.outbound_username, saved.outbound_password) == ("", "")


@pytest.mark.parametrize(
    ("destinations", "number", "allowed"),
    [
        (["+1555"], "+15550142", True),
        (["+1555"], "+15560142", False),
        (["+442071234567"], "+442071234567", True),
        ([], "+15550142", False),
    ],
)
def test_call_destinations_are_prefixes(destinations, number, allowed):
    assert call_destination_allowed(destinations, number) is allowed


@pytest.mark.parametrize("bad", [["1555"], ["+1 555"], "+1555", [5]])
def test_call_destinations_must_be_e164_prefixes(owner_client, bad):
    client = owner_client[0]
    client.call_destinations = bad
    with pytest.raises(ValidationError):
        client.full_clean()


# --- the job dials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (486, "callee_busy"),
        (600, "callee_busy"),
        (603, "callee_declined"),
        (480, "callee_no_answer"),
        (408, "callee_no_answer"),
        (487, "callee_no_answer"),
        (503, "call_failed"),
        (None, "call_failed"),
    ],
)
def test_a_sip_status_is_an_outcome(status, outcome):
    assert job_session.call_outcome(status) == outcome


def test_the_sip_status_comes_from_the_servers_error():
    error = api.TwirpError("unavailable", "INVITE failed", status=503, metadata={"sip_status_code": "486"})
    assert job_session.sip_status_of(error) == 486
    assert job_session.sip_status_of(RuntimeError("sip status: 480: Temporarily Unavailable")) == 480
    assert job_session.sip_status_of(RuntimeError("connection reset")) is None


def test_a_placed_call_not_yet_answered_is_dialled_and_an_answered_one_is_not(agent, transactional_db):
    line = _line(agent, outbound_address="sip.carrier.example", livekit_outbound_trunk_id="ST_out")
    ringing = _placed(line)
    config = asyncio.run(load_job_config(str(ringing.pk)))
    assert config.dial_to == CALLEE and config.outbound_trunk_id == "ST_out" and config.phone
    assert config.caller_identity == "sip-0123456789abcdef"
    answered = _placed(line, state=SessionState.ACTIVE, room="4567")
    assert asyncio.run(load_job_config(str(answered.pk))).dial_to == ""


class _Room:
    name = "phone-1-out-0123"


class _SipApi:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.requests: list[Any] = []

    async def create_sip_participant(self, request: Any, *, timeout: float) -> Any:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return api.SIPParticipantInfo(participant_id="PA_callee", participant_identity=request.participant_identity)


class _Ctx:
    def __init__(self, error: Exception | None = None) -> None:
        self.room = _Room()
        self.api = type("Api", (), {"sip": _SipApi(error)})()


def _dial(ctx: _Ctx, session: VoiceSession) -> str:
    return asyncio.run(
        job_session.dial_out(
            ctx, session_id=str(session.pk), to=CALLEE, trunk_id="ST_out", identity=session.caller_participant
        )
    )


def test_an_answered_call_makes_the_session_active(agent, transactional_db):
    line = _line(agent, outbound_address="sip.carrier.example")
    session = _placed(line)
    ctx = _Ctx()
    assert _dial(ctx, session) == ""
    [request] = ctx.api.sip.requests
    assert request.sip_call_to == CALLEE and request.sip_trunk_id == "ST_out" and request.wait_until_answered
    assert request.participant_identity == session.caller_participant and request.room_name == _Room.name
    session.refresh_from_db()
    assert session.state == SessionState.ACTIVE and session.caller_connection == "PA_callee"
    assert SessionEvent.objects.get(session=session, type="call.outcome").payload["outcome"] == "answered"


def test_a_refusal_before_dialling_is_asked_again_and_a_sip_answer_is_not(monkeypatch):
    monkeypatch.setattr(job_session, "DIAL_RETRY_SECONDS", 0.0)
    capacity = api.TwirpError("unavailable", "twirp error unknown: cpu exhausted", status=503)
    busy = api.TwirpError("resource_exhausted", "INVITE failed: sip status: 486: Busy Here", status=429)
    assert job_session.refused_before_dialling(capacity) and not job_session.refused_before_dialling(busy)

    class Flaky(_SipApi):
        async def create_sip_participant(self, request: Any, *, timeout: float) -> Any:
            self.requests.append(request)
            if len(self.requests) < 3:
                raise capacity
            return api.SIPParticipantInfo(participant_id="PA_callee")

    ctx = _Ctx()
    ctx.api.sip = Flaky(None)
    assert asyncio.run(job_session._create_sip_participant(ctx, object())).participant_id == "PA_callee"
    assert len(ctx.api.sip.requests) == 3
    ctx.api.sip = _SipApi(busy)
    with pytest.raises(api.TwirpError):
        asyncio.run(job_session._create_sip_participant(ctx, object()))
    assert len(ctx.api.sip.requests) == 1


def test_a_busy_callee_fails_the_session_with_the_outcome(agent, transactional_db):
    line = _line(agent, outbound_address="sip.carrier.example")
    session = _placed(line)
    busy = api.TwirpError("unavailable", "INVITE failed: 486 Busy Here", status=503)
    assert _dial(_Ctx(busy), session) == "callee_busy"
    session.refresh_from_db()
    assert session.state == SessionState.FAILED and session.end_reason == "callee_busy"
    outcome = SessionEvent.objects.get(session=session, type="call.outcome").payload
    assert outcome["outcome"] == "callee_busy" and outcome["sip_status"] == 486


# --- webhooks of a ringing call ------------------------------------------------------------


def test_the_callee_ringing_and_not_answering_leave_the_outcome_to_the_job(
    agent, django_capture_on_commit_callbacks, eager_celery
):
    line = _line(agent, outbound_address="sip.carrier.example")
    session = _placed(line)
    http = Client()
    _deliver(
        http,
        django_capture_on_commit_callbacks,
        _event("participant_joined", session.room_name, "sip-0123456789abcdef"),
    )
    _deliver(
        http, django_capture_on_commit_callbacks, _event("participant_left", session.room_name, "sip-0123456789abcdef")
    )
    session.refresh_from_db()
    assert session.state == SessionState.CREATED
    kinds = list(SessionEvent.objects.filter(session=session).values_list("type", flat=True))
    assert "caller.ringing" in kinds and "caller.not_answered" in kinds


def test_the_callee_hanging_up_after_answering_ends_the_call(agent, django_capture_on_commit_callbacks, eager_celery):
    line = _line(agent, outbound_address="sip.carrier.example")
    session = _placed(line, state=SessionState.ACTIVE)
    _deliver(
        Client(),
        django_capture_on_commit_callbacks,
        _event("participant_left", session.room_name, "sip-0123456789abcdef"),
    )
    session.refresh_from_db()
    assert session.state == SessionState.ENDED and session.end_reason == "caller_hung_up"


def test_api_clients_keep_their_destinations(owner_client):
    client = ApiClient.objects.get(pk=owner_client[0].pk)
    assert client.call_destinations == []


# --- the doctor ----------------------------------------------------------------------------


def test_the_doctor_wants_the_outbound_trunk_of_a_line_that_places_calls(agent, monkeypatch, transactional_db):
    from voiceplatform.doctor import transport

    _line(agent, livekit_trunk_id="ST_1", outbound_address="sip.carrier.example", livekit_outbound_trunk_id="ST_2")
    held = [api.SIPInboundTrunkInfo(sip_trunk_id="ST_1", numbers=["+15550100"])]

    async def listing() -> tuple[list[Any], list[Any]]:
        return held, []

    monkeypatch.setattr(livekit_server, "sip_lines_list_async", listing)
    check = asyncio.run(transport._check_phone_lines())
    assert check.status == "fail" and "+15550100 (outbound)" in check.detail
    held.append(api.SIPOutboundTrunkInfo(sip_trunk_id="ST_2", numbers=["+15550100"]))
    assert asyncio.run(transport._check_phone_lines()).status == "ok"


@pytest.fixture
def health_server():
    """A stand-in for the SIP service's health port: answers the status in `codes[0]`."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    codes = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(codes[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", codes
    server.shutdown()
    server.server_close()


def test_the_doctor_asks_the_sip_service_itself(agent, health_server, transactional_db):
    from voiceplatform.doctor import transport

    url, codes = health_server
    with override_settings(LIVEKIT_SIP_HEALTH_URL=url):
        assert asyncio.run(transport._check_sip_service()).status == "ok"
        codes[0] = 429
        check = asyncio.run(transport._check_sip_service())
        assert check.status == "warn" and "refuses new calls" in check.detail
        codes[0] = 503
        assert asyncio.run(transport._check_sip_service()).status == "fail"
    with override_settings(LIVEKIT_SIP_HEALTH_URL="http://127.0.0.1:9/"):
        assert asyncio.run(transport._check_sip_service()).status == "fail"
    with override_settings(LIVEKIT_SIP_HEALTH_URL=""):
        assert asyncio.run(transport._check_sip_service()).status == "ok"  # no lines, nothing to reach
        _line(agent)
        check = asyncio.run(transport._check_sip_service())
        assert check.status == "warn" and "LIVEKIT_SIP_HEALTH_URL" in check.detail
