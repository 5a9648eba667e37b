"""LiveKit webhooks: verify and store fast (`webhook_receive`), apply later (`webhook_event_process`).

Delivery is at-least-once, so rows are unique on the event id and a replay is a no-op.
Storing and processing are separate: after commit the receiver queues the Celery task
`sessions_app.tasks.livekit_webhook_process` (which calls `webhook_event_process`), so the
HTTP answer does not wait for the state changes. If the broker cannot take the task, the
event is processed in the request instead, so no webhook is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from google.protobuf.json_format import MessageToDict
from livekit.api import TokenVerifier, WebhookReceiver

from sessions_app.models import LiveKitWebhookEvent, SessionEvent, SessionState, VoiceSession
from sessions_app.tokens import AGENT_IDENTITY_PREFIX, caller_identity
from voiceplatform.api_errors import ApiError

logger = logging.getLogger(__name__)

CALLER_LEFT_EVENTS = ("participant_left", "participant_connection_aborted")
HANDLED_EVENTS = ("participant_joined", *CALLER_LEFT_EVENTS, "room_finished")


def webhook_receive(*, body: str, authorization: str) -> tuple[LiveKitWebhookEvent, bool]:
    """Verify a webhook (JWT signed with our key/secret + sha256 of the body) and store it once.

    Returns the stored row and whether it is new. A bad signature or a body that does not
    match the signed hash raises a 401 ApiError.
    """
    token = authorization.strip()
    if token.lower().startswith("bearer "):  # LiveKit sends the bare JWT; accept both
        token = token[7:].strip()
    if not token:
        raise ApiError(401, "invalid_webhook", "The webhook has no Authorization token.")
    receiver = WebhookReceiver(TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET))
    try:
        event = receiver.receive(body, token)
    except Exception as exc:  # jwt errors, hash mismatch, unparsable body: all unauthenticated
        raise ApiError(401, "invalid_webhook", "The webhook signature or body hash does not verify.") from exc
    if not event.id:
        raise ApiError(400, "invalid_webhook", "The webhook event has no id.")

    payload = MessageToDict(event, preserving_proto_field_name=True)
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
    if session is not None and row.event in HANDLED_EVENTS:
        _apply(session=session, row=row)
    row.processed_at = timezone.now()
    row.save(update_fields=["processed_at"])
    return True


def _apply(*, session: VoiceSession, row: LiveKitWebhookEvent) -> None:
    from sessions_app.services import session_event_append, session_publish_updated, session_transition

    participant = row.payload.get("participant") or {}
    identity = str(participant.get("identity", ""))
    base = {"webhook_event_id": row.event_id, "identity": identity}

    if row.event == "room_finished":
        session_event_append(session_id=session.pk, type="room.finished", payload={"webhook_event_id": row.event_id})
        if session.is_live:
            session_transition(session_id=session.pk, to_state=SessionState.ENDED, reason="room_finished")
        return

    if _is_agent(participant):
        kind = "agent.joined" if row.event == "participant_joined" else "agent.left"
        session_event_append(session_id=session.pk, type=kind, payload={**base, "event": row.event})
        return
    if identity != caller_identity(session.caller_id):
        # Someone else in the room (a supervisor, a recorder): noted, never drives state.
        session_event_append(session_id=session.pk, type="participant." + row.event, payload=base)
        return

    if row.event == "participant_joined":
        counted = _count_rejoin(session=session)
        session_event_append(
            session_id=session.pk, type="caller.joined", payload={**base, "reconnect_counted": counted}
        )
        if session.state in (SessionState.CREATED, SessionState.RECONNECTING):
            session_transition(session_id=session.pk, to_state=SessionState.ACTIVE, reason="caller_joined")
        elif counted:
            session.refresh_from_db()
            session_publish_updated(session=session)
        return

    session_event_append(session_id=session.pk, type="caller.left", payload={**base, "event": row.event})
    if session.state == SessionState.ACTIVE:
        session_transition(session_id=session.pk, to_state=SessionState.RECONNECTING, reason=row.event)


def _count_rejoin(*, session: VoiceSession) -> bool:
    """Count a reconnect when a caller who had joined before joins again.

    Not if the client already asked for it through POST …/reconnect since the caller's
    previous join: that call counted it (one drop, one reconnect).
    """
    from sessions_app.metrics import RECONNECTS

    previous_join = (
        SessionEvent.objects.filter(session=session, type="caller.joined")
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    if previous_join is None:
        return False
    if SessionEvent.objects.filter(session=session, type="session.reconnect", seq__gt=previous_join).exists():
        return False
    VoiceSession.objects.filter(pk=session.pk).update(reconnect_count=F("reconnect_count") + 1)
    from sessions_app.services import session_event_append

    session.refresh_from_db(fields=["reconnect_count"])
    session_event_append(
        session_id=session.pk,
        type="session.reconnect",
        payload={"source": "webhook", "reconnect_count": session.reconnect_count},
    )
    label = session.agent.slug
    transaction.on_commit(lambda: RECONNECTS.labels(agent=label).inc())
    return True
