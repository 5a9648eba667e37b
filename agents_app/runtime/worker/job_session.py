"""The job's part of the session lifecycle: claiming the session as its agent, making it
final when the platform ended it, and answering the doctor's dispatch probe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from livekit.agents import AgentSession, JobContext

logger = logging.getLogger(__name__)


async def quiet_close(session: AgentSession) -> None:
    with contextlib.suppress(Exception):
        await session.aclose()


async def claim_session(session_id: str, ctx: JobContext) -> bool:
    """Report this job as the session's agent (the webhook reports the same join later).

    Done by the job too, so the platform knows its agent even when webhooks are slow or
    not configured (LiveKit Cloud without a webhook URL).
    """
    from asgiref.sync import sync_to_async

    from sessions_app.lifecycle import session_agent_joined

    identity = ctx.room.local_participant.identity
    serving = await sync_to_async(session_agent_joined, thread_sensitive=False)(
        session_id=session_id, identity=identity, job_id=ctx.job.id, source="job"
    )
    if not serving:
        logger.warning("session %s has ended or has another agent: job %s leaves", session_id, ctx.job.id)
        ctx.shutdown("the session has ended or another agent serves it")
    return serving


async def end_session_if_live(session_id: str, reason: str) -> None:
    """The platform asked the job to end: make sure the session is final."""
    from asgiref.sync import sync_to_async

    from sessions_app.services import session_finish

    await sync_to_async(session_finish, thread_sensitive=False)(session_id=session_id, reason=reason)


# `manage.py doctor` dispatches a job with PROBE_METADATA_KEY into a room of its own to see
# that a worker serves LIVEKIT_AGENT_NAME (sessions_app/livekit_server.py). Such a job
# joins, touches no session and no database, and leaves when the doctor deletes the room.
PROBE_STAY_SECONDS = 30.0


async def answer_probe(ctx: JobContext) -> None:
    from livekit.agents import AutoSubscribe

    logger.info("doctor probe %s: joining room %s", ctx.job.id, getattr(ctx.room, "name", ""))
    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    # Normally the doctor deletes the room within seconds; this bounds a doctor that died.
    asyncio.get_running_loop().call_later(PROBE_STAY_SECONDS, ctx.shutdown, "doctor probe answered")


# A phone line's dispatch rule starts the job when LiveKit's SIP service makes the call's
# room; the caller's SIP participant is already in it (the call is answered once the agent
# subscribes to its audio). The wait is bounded in case the caller hung up meanwhile.
PHONE_CALLER_WAIT_SECONDS = 20.0


async def open_phone_session(ctx: JobContext, line_id: int) -> str | None:
    """Connect, find the SIP caller and open the call's voice session; its id, or None
    when the call cannot be served (the caller left, the line or agent is gone): the job
    then hangs up (the room is deleted) and ends."""
    from asgiref.sync import sync_to_async
    from livekit import rtc

    from sessions_app.models import mask_room_name
    from sessions_app.services import phone_session_open
    from voiceplatform.errors import InvalidInput

    await ctx.connect()
    try:
        caller = await asyncio.wait_for(
            ctx.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP), PHONE_CALLER_WAIT_SECONDS
        )
    except TimeoutError:
        logger.warning(
            "phone line %s: no SIP caller in room %s; ending the job", line_id, mask_room_name(ctx.room.name)
        )
        ctx.shutdown("no SIP caller in the room")
        return None
    attributes = dict(caller.attributes)
    try:
        session = await sync_to_async(phone_session_open, thread_sensitive=False)(
            line_id=line_id,
            room_name=ctx.room.name,
            caller_number=attributes.get("sip.phoneNumber", ""),
            participant_identity=caller.identity,
            connection=caller.sid,
            call_id=attributes.get("sip.callID", ""),
        )
    except InvalidInput as exc:
        logger.warning("phone line %s: %s; hanging up", line_id, exc)
        ctx.delete_room()
        ctx.shutdown(str(exc))
        return None
    logger.info("phone line %s: call %s answered as session %s", line_id, attributes.get("sip.callID", ""), session.pk)
    return str(session.pk)


# A placed call (POST /calls): how long the callee's phone may ring, and what each SIP
# final status means as the session's outcome (its end reason, docs/telephony.md).
DIAL_RINGING_SECONDS = 30
CALL_OUTCOMES = {486: "callee_busy", 600: "callee_busy", 603: "callee_declined"}
NO_ANSWER_STATUSES = frozenset({408, 480, 487})


def call_outcome(sip_status: int | None) -> str:
    if sip_status in NO_ANSWER_STATUSES:
        return "callee_no_answer"
    return CALL_OUTCOMES.get(sip_status or 0, "call_failed")


def sip_status_of(exc: Exception) -> int | None:
    """The SIP final status of a failed CreateSIPParticipant: the server's error metadata
    (`sip_status_code`), else the first 4xx-6xx code in its message."""
    import re

    metadata = getattr(exc, "metadata", None) or {}
    for key in ("sip_status_code", "sip_status"):
        value = str(metadata.get(key, "")).strip()
        if value.isdigit():
            return int(value)
    found = re.search(r"\b([4-6][0-9]{2})\b", str(getattr(exc, "message", "") or exc))
    return int(found.group(1)) if found else None


# The SIP service refuses a call before dialling when it is short of capacity ("cpu
# exhausted", 503 with no SIP status): nothing was sent, so asking again is safe.
DIAL_ATTEMPTS = 3
DIAL_RETRY_SECONDS = 1.0


def refused_before_dialling(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 503 and sip_status_of(exc) is None


async def _create_sip_participant(ctx: JobContext, request: Any) -> Any:
    for attempt in range(1, DIAL_ATTEMPTS + 1):
        try:
            return await ctx.api.sip.create_sip_participant(request, timeout=DIAL_RINGING_SECONDS + 15)
        except Exception as exc:
            if attempt == DIAL_ATTEMPTS or not refused_before_dialling(exc):
                raise
            logger.info("the SIP service refused to dial (%s); asking again (attempt %d)", exc, attempt + 1)
            await asyncio.sleep(DIAL_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")


async def dial_out(ctx: JobContext, *, session_id: str, to: str, trunk_id: str, identity: str) -> str:
    """Dial the placed call's callee into the room and wait for the answer. Returns "" when
    they answered (the session is then active), else the outcome, which has failed the
    session (`call.outcome` event, end reason busy / no answer / declined / failed)."""
    from asgiref.sync import sync_to_async
    from livekit import api

    from sessions_app.lifecycle import session_caller_joined
    from sessions_app.models import SessionState
    from sessions_app.services import session_event_append, session_transition

    request = api.CreateSIPParticipantRequest(
        sip_trunk_id=trunk_id,
        sip_call_to=to,
        room_name=ctx.room.name,
        participant_identity=identity,
        participant_name="Phone",
        wait_until_answered=True,
        play_dialtone=False,
    )
    request.ringing_timeout.FromSeconds(DIAL_RINGING_SECONDS)
    started = time.monotonic()
    try:
        participant = await _create_sip_participant(ctx, request)
    except Exception as exc:
        status = sip_status_of(exc)
        outcome = call_outcome(status)
        logger.info("placed call in room %s: %s (SIP %s): %s", ctx.room.name, outcome, status, exc)
        payload = {"outcome": outcome, "sip_status": status, "error": str(exc)[:300]}
        await sync_to_async(session_event_append, thread_sensitive=False)(
            session_id=session_id, type="call.outcome", payload=payload
        )
        await sync_to_async(session_transition, thread_sensitive=False)(
            session_id=session_id, to_state=SessionState.FAILED, reason=outcome
        )
        return outcome
    waited_ms = round((time.monotonic() - started) * 1000)
    await sync_to_async(session_event_append, thread_sensitive=False)(
        session_id=session_id, type="call.outcome", payload={"outcome": "answered", "ringing_ms": waited_ms}
    )
    await sync_to_async(session_caller_joined, thread_sensitive=False)(
        session_id=session_id, connection=participant.participant_id, joined_at_ms=None, source="phone"
    )
    return ""
