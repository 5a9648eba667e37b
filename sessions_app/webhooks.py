"""LiveKit webhooks: verify and store fast (`webhook_receive`), apply later (`webhook_event_process`).

Delivery is at-least-once, so rows are unique on the event id and a replay is a no-op.
Storing and processing are separate: after commit the receiver queues the Celery task
`sessions_app.tasks.livekit_webhook_process` (which calls `webhook_event_process`), so the
HTTP answer does not wait for the state changes. If the broker cannot take the task, the
event is processed in the request instead, so no webhook is lost.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from google.protobuf.json_format import MessageToDict
from livekit.api import TokenVerifier, WebhookReceiver

from sessions_app.models import (
    CallDirection,
    LiveKitWebhookEvent,
    SessionChannel,
    SessionState,
    VoiceSession,
    mask_room_name,
)
from sessions_app.selectors import session_transfer_requested
from sessions_app.tokens import AGENT_IDENTITY_PREFIX, session_caller_identity
from voiceplatform.errors import InvalidInput, Malformed, NotFound, Unauthenticated

logger = logging.getLogger(__name__)

CALLER_LEFT_EVENTS = ("participant_left", "participant_connection_aborted")
HANDLED_EVENTS = ("participant_joined", *CALLER_LEFT_EVENTS, "room_finished")


def webhook_receive(*, body: str, authorization: str) -> tuple[LiveKitWebhookEvent, bool]:
    """Verify a webhook (JWT signed with our key/secret + sha256 of the body) and store it once.

    Returns the stored row and whether it is new. A bad signature or a body that does not
    match the signed hash raises Unauthenticated (a 401 at the API edge).
    """
    if settings.LIVEKIT_LOCAL_MODE:
        # No LiveKit server sends webhooks here; in local mode nothing should drive the
        # sessions from outside (the local agent host calls the lifecycle itself).
        raise NotFound("livekit_not_configured", "No LiveKit server is configured (LIVEKIT_URL is unset).")
    token = authorization.strip()
    if token.lower().startswith("bearer "):  # LiveKit sends the bare JWT; accept both
        token = token[7:].strip()
    if not token:
        raise Unauthenticated("invalid_webhook", "The webhook has no Authorization token.")
    receiver = WebhookReceiver(TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET))
    try:
        event = receiver.receive(body, token)
    except Exception as exc:  # jwt errors, hash mismatch, unparsable body: all unauthenticated
        raise Unauthenticated("invalid_webhook", "The webhook signature or body hash does not verify.") from exc
    if not event.id:
        raise Malformed("invalid_webhook", "The webhook event has no id.")

    payload = MessageToDict(event, preserving_proto_field_name=True)
    # The room's TURN password is a credential: it has no business in the database.
    if isinstance(payload.get("room"), dict):
        payload["room"].pop("turn_password", None)
    try:
        with transaction.atomic():
            row, created = LiveKitWebhookEvent.objects.get_or_create(
                event_id=event.id[:128],
                defaults={"event": event.event[:64], "room_name": event.room.name[:128], "payload": payload},
            )
    except IntegrityError:  # a concurrent delivery of the same event won the insert
        return LiveKitWebhookEvent.objects.get(event_id=event.id[:128]), False
    if created:
        event_id = row.event_id
        transaction.on_commit(lambda: _enqueue_processing(event_id))
    return row, created


def _enqueue_processing(event_id: str) -> None:
    """Queue the processing task; process inline if the broker is unavailable."""
    try:
        from sessions_app.tasks import livekit_webhook_process

        livekit_webhook_process.delay(event_id)
        return
    except Exception:
        logger.warning("could not queue LiveKit webhook %s; processing it now", event_id, exc_info=True)
    try:
        webhook_event_process(event_id=event_id)
    except Exception:  # the row stays unprocessed (processed_at NULL) for a retry
        logger.exception("processing LiveKit webhook %s failed", event_id)


def _is_agent(participant: dict[str, Any]) -> bool:
    return participant.get("kind") == "AGENT" or str(participant.get("identity", "")).startswith(AGENT_IDENTITY_PREFIX)


@transaction.atomic
def webhook_event_process(*, event_id: str) -> bool:
    """Apply one stored webhook to its session. Idempotent: returns False if already done."""
    row = LiveKitWebhookEvent.objects.select_for_update().filter(event_id=event_id).first()
    if row is None or row.processed_at is not None:
        return False
    session = (
        VoiceSession.objects.select_for_update().filter(room_name=row.room_name).first() if row.room_name else None
    )
    if session is None and row.event == "participant_joined":
        session = _phone_call_arrived(row)
    if session is not None and row.event in HANDLED_EVENTS:
        _apply(session=session, row=row)
    row.processed_at = timezone.now()
    row.save(update_fields=["processed_at"])
    return True


# The room a phone line's dispatch rule makes for an inbound call: `phone-<line>-_<number>_<random>`.
INBOUND_PHONE_ROOM_RE = re.compile(r"^phone-([0-9]+)-_")


def _phone_call_arrived(row: LiveKitWebhookEvent) -> VoiceSession | None:
    """A SIP caller joined a phone line's room that has no session yet (no agent has opened
    it): the session starts here, so a call no agent answers still fails with a reason."""
    from sessions_app.services import phone_call_arrived

    participant = row.payload.get("participant") or {}
    found = INBOUND_PHONE_ROOM_RE.match(row.room_name)
    if found is None or participant.get("kind") != "SIP":
        return None
    attributes = participant.get("attributes") or {}
    try:
        session = phone_call_arrived(
            line_id=int(found.group(1)),
            room_name=row.room_name,
            caller_number=str(attributes.get("sip.phoneNumber", "")),
            participant_identity=str(participant.get("identity", "")),
            call_id=str(attributes.get("sip.callID", "")),
        )
    except InvalidInput as exc:  # the line or its agent is gone: the job (if any) hangs up
        logger.warning("phone call in room %s opens no session: %s", mask_room_name(row.room_name), exc.message)
        return None
    return VoiceSession.objects.select_for_update().get(pk=session.pk)


def _apply(*, session: VoiceSession, row: LiveKitWebhookEvent) -> None:
    """Hand the event to the session lifecycle services (sessions_app.lifecycle)."""
    from sessions_app import lifecycle
    from sessions_app.services import session_event_append, session_finish

    participant = row.payload.get("participant") or {}
    identity = str(participant.get("identity", ""))
    base = {"webhook_event_id": row.event_id}

    if row.event == "room_finished":
        session_event_append(session_id=session.pk, type="room.finished", payload=base)
        session_finish(session_id=session.pk, reason="room_finished")
        return

    if _is_agent(participant):
        if row.event == "participant_joined":
            job_id = identity[len(AGENT_IDENTITY_PREFIX) :] if identity.startswith(AGENT_IDENTITY_PREFIX) else ""
            lifecycle.session_agent_joined(session_id=session.pk, identity=identity, job_id=job_id, source="webhook")
        else:
            lifecycle.session_agent_left(
                session_id=session.pk,
                identity=identity,
                reason=str(participant.get("disconnect_reason") or row.event),
                source="webhook",
                payload=base,
            )
        return
    if identity != session_caller_identity(caller_id=session.caller_id, caller_participant=session.caller_participant):
        # Someone else in the room (a supervisor, a recorder): noted, never drives state.
        session_event_append(
            session_id=session.pk, type="participant." + row.event, payload={**base, "identity": identity}
        )
        return

    connection = str(participant.get("sid", ""))
    if session.direction == CallDirection.OUTBOUND and session.state == SessionState.CREATED:
        # A placed call rings with its SIP participant already in the room: the agent's job
        # reports the answer (the session turns active) or the outcome (it fails).
        kind = "caller.ringing" if row.event == "participant_joined" else "caller.not_answered"
        session_event_append(session_id=session.pk, type=kind, payload={**base, "connection": connection})
        return
    if session.channel == SessionChannel.PHONE and row.event != "participant_joined":
        # A phone caller who hangs up (or was transferred) does not come back on the same call.
        session_event_append(session_id=session.pk, type="caller.left", payload={**base, "connection": connection})
        transferred = session_transfer_requested(session_id=session.pk)
        session_finish(session_id=session.pk, reason="transferred" if transferred else "caller_hung_up")
        return
    if row.event == "participant_joined":
        try:
            lifecycle.session_caller_joined(
                session_id=session.pk,
                connection=connection,
                joined_at_ms=_int_or_none(participant.get("joined_at_ms")),
                source="webhook",
                payload=base,
            )
        except lifecycle.SessionFinal:
            session_event_append(
                session_id=session.pk, type="caller.joined", payload={**base, "connection": connection, "final": True}
            )
        return
    lifecycle.session_caller_left(
        session_id=session.pk,
        connection=connection,
        reason=str(participant.get("disconnect_reason") or row.event),
        payload={**base, "event": row.event},
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
