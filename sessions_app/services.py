"""Writes for API clients, voice sessions and their event timeline.

Service functions are keyword-only, atomic, and broadcast after commit.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from sessions_app import broadcast
from sessions_app.models import (
    ALLOWED_TRANSITIONS,
    ApiClient,
    ApiScope,
    SessionEvent,
    SessionState,
    VoiceSession,
)

API_KEY_PREFIX = "vp_"


class InvalidTransition(Exception):
    def __init__(self, session: VoiceSession, to_state: str) -> None:
        super().__init__(f"Session {session.id} cannot go from {session.state} to {to_state}.")
        self.from_state = session.state
        self.to_state = to_state


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_client_create(*, name: str, scope: str = ApiScope.CLIENT, webhook_url: str = "") -> tuple[ApiClient, str]:
    """Create a client and return it with its key. Only the key's hash is stored."""
    if scope not in ApiScope.values:
        raise ValueError(f"scope must be one of {', '.join(ApiScope.values)}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient.objects.create(
        name=name,
        scope=scope,
        key_prefix=key[:10],
        key_hash=hash_api_key(key),
        webhook_url=webhook_url,
        webhook_secret=secrets.token_urlsafe(32) if webhook_url else "",
    )
    return client, key


def api_client_authenticate(*, key: str) -> ApiClient | None:
    if not key or not key.startswith(API_KEY_PREFIX):
        return None
    client = ApiClient.objects.filter(key_hash=hash_api_key(key), active=True).first()
    if client is not None:
        # Cheap "last used" bookkeeping, at most once a minute per client.
        now = timezone.now()
        if client.last_used_at is None or (now - client.last_used_at).total_seconds() > 60:
            ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
    return client


def session_summary(session: VoiceSession) -> dict[str, Any]:
    """The live-row shape used by `session.updated` messages and dashboard snapshots."""
    return {
        "id": str(session.id),
        "agent": session.agent.slug if session.agent_id else None,
        "agent_name": session.agent.name if session.agent_id else None,
        "prompt_version": session.prompt_version.number if session.prompt_version_id else None,
        "caller_id": session.caller_id,
        "room": session.room_name,
        "state": session.state,
        "end_reason": session.end_reason,
        "turns": session.turn_count,
        "interrupts": session.interrupt_count,
        "reconnects": session.reconnect_count,
        "last_e2e_ms": session.last_e2e_ms,
        "created_at": session.created_at.isoformat() if session.created_at else None,
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "seq": session.last_seq,
    }


def _publish_after_commit(session_id: UUID, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: broadcast.publish(broadcast.session_groups(session_id), message))


@transaction.atomic
def session_event_append(*, session_id: UUID | str, type: str, payload: dict[str, Any] | None = None) -> SessionEvent:
    """Append an event with the session's next sequence number (gapless, per session)."""
    updated = VoiceSession.objects.filter(pk=session_id).update(last_seq=F("last_seq") + 1)
    if not updated:
        raise VoiceSession.DoesNotExist(f"no session {session_id}")
    seq = VoiceSession.objects.filter(pk=session_id).values_list("last_seq", flat=True).get()
    event = SessionEvent.objects.create(session_id=session_id, seq=seq, type=type, payload=payload or {})
    _publish_after_commit(
        event.session_id,
        {
            "type": "event.added",
            "session_id": str(session_id),
            "seq": seq,
            "event": {"seq": seq, "type": type, "payload": event.payload, "created_at": event.created_at.isoformat()},
        },
    )
    return event


@transaction.atomic
def session_transition(
    *,
    session_id: UUID | str,
    to_state: str,
    reason: str = "",
    payload: dict[str, Any] | None = None,
) -> VoiceSession:
    """Move a session through its state machine; every transition writes an event."""
    session = VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)
    if to_state not in ALLOWED_TRANSITIONS[session.state]:
        raise InvalidTransition(session, to_state)
    from_state = session.state
    now = timezone.now()
    session.state = to_state
    fields = ["state", "updated_at"]
    if to_state == SessionState.ACTIVE and session.started_at is None:
        session.started_at = now
        fields.append("started_at")
    if to_state in (SessionState.ENDED, SessionState.FAILED):
        session.ended_at = now
        session.end_reason = reason[:200]
        fields += ["ended_at", "end_reason"]
    session.save(update_fields=fields)
    session_event_append(
        session_id=session.id,
        type="session.state_changed",
        payload={"from": from_state, "to": to_state, "reason": reason, **(payload or {})},
    )
    session.refresh_from_db(fields=["last_seq"])
    session_publish_updated(session=session)
    if to_state in (SessionState.ENDED, SessionState.FAILED):
        _on_session_finished(session.id)
    return session


def session_publish_updated(*, session: VoiceSession) -> None:
    summary = session_summary(session)
    _publish_after_commit(session.id, {"type": "session.updated", "session_id": str(session.id), "seq": session.last_seq, "session": summary})


def _on_session_finished(session_id: UUID) -> None:
    """Queue post-call work after commit (the Celery issue fills in the task)."""

    def enqueue() -> None:
        try:
            from sessions_app.tasks import session_post_call_report

            session_post_call_report.delay(str(session_id))
        except Exception:  # the reaper/backfill picks up reports that failed to enqueue
            import logging

            logging.getLogger(__name__).warning("could not enqueue post-call report", exc_info=True)

    transaction.on_commit(enqueue)
