"""Periodic upkeep: the stale-session reaper, retention, and the report backfill.

All of it is safe to run twice at once (two beat schedulers, a redelivered task):
every write re-checks its condition under a row lock or deletes by primary key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from sessions_app.models import (
    FINAL_STATES,
    LIVE_STATES,
    LiveKitWebhookEvent,
    SessionEvent,
    SessionState,
    Turn,
    VoiceSession,
)
from voiceplatform.logging import log_context

logger = logging.getLogger(__name__)

RETENTION_BATCH_SIZE = 1000
REAPER_BATCH_SIZE = 200
# A finished session without a report after this long lost its enqueue (Redis down at
# the time, a crash between commit and enqueue); the backfill queues it again.


# --- stale-session reaper ----------------------------------------------------------------------


def stale_session_ids(*, now: datetime | None = None, stale_seconds: int | None = None) -> list[UUID]:
    """Live sessions whose agent has been silent (no heartbeat, else since creation) too long."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=stale_seconds or settings.STALE_SESSION_SECONDS)
    return list(
        VoiceSession.objects.filter(state__in=LIVE_STATES)
        .annotate(last_sign_of_life=Coalesce("last_heartbeat_at", "created_at"))
        .filter(last_sign_of_life__lt=cutoff)
        .order_by("last_sign_of_life")
        .values_list("id", flat=True)[:REAPER_BATCH_SIZE]
    )


@transaction.atomic
def session_reap(*, session_id: UUID | str, now: datetime | None = None, stale_seconds: int | None = None) -> bool:
    """Fail one session if, under its row lock, it is still live and still silent."""
    from sessions_app.services import session_transition

    now = now or timezone.now()
    stale_seconds = stale_seconds or settings.STALE_SESSION_SECONDS
    session = VoiceSession.objects.select_for_update().filter(pk=session_id).first()
    if session is None or session.state not in LIVE_STATES:
        return False
    last = session.last_heartbeat_at or session.created_at
    silent_for = (now - last).total_seconds()
    if silent_for <= stale_seconds:
        return False  # a heartbeat landed since the scan
    if session.last_heartbeat_at is None:
        reason = f"no agent joined within {stale_seconds} s"
    else:
        reason = f"agent heartbeat lost: none for {int(silent_for)} s (limit {stale_seconds} s)"
    with log_context(session_id=str(session.id), room=session.room_name):
        session_transition(
            session_id=session.id,
            to_state=SessionState.FAILED,
            reason=reason,
            payload={
                "reaped": True,
                "last_heartbeat_at": session.last_heartbeat_at.isoformat() if session.last_heartbeat_at else None,
                "stale_seconds": stale_seconds,
            },
        )
        logger.warning("stale session failed: %s", reason)
    return True


def sessions_reap_stale(*, now: datetime | None = None) -> list[str]:
    """Fail every stale live session; returns the ids failed in this run."""
    reaped = []
    for session_id in stale_session_ids(now=now):
        try:
            if session_reap(session_id=session_id, now=now):
                reaped.append(str(session_id))
        except Exception:  # one bad row must not stop the sweep
            logger.exception("could not reap session %s", session_id)
    return reaped


# --- retention -----------------------------------------------------------------------------------


@dataclass
class RetentionResult:
    cutoff: datetime
    events: int = 0
    turns: int = 0
    webhook_events: int = 0
    reports_built: list[str] = field(default_factory=list)


def _delete_in_batches(queryset, batch_size: int) -> int:  # type: ignore[no-untyped-def]
    """Delete by primary key in short transactions, so no long lock blocks live writers."""
    total = 0
    model = queryset.model
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return total
        with transaction.atomic():
            deleted, _ = model.objects.filter(pk__in=ids).delete()
        total += deleted


def retention_purge(
    *, now: datetime | None = None, days: int | None = None, batch_size: int = RETENTION_BATCH_SIZE
) -> RetentionResult:
    """Delete session events, turns and processed LiveKit webhooks older than RETENTION_DAYS.

    Sessions themselves stay, with their report. A finished session that never got a
    report gets it built first, so deleting its turns never loses its KPIs. Turns of
    live sessions are kept whatever their age (a long call still needs its context).
    """
    from sessions_app.reports import session_report_create

    now = now or timezone.now()
    cutoff = now - timedelta(days=days or settings.RETENTION_DAYS)
    result = RetentionResult(cutoff=cutoff)

    old_turns = Turn.objects.filter(created_at__lt=cutoff)
    unreported = (
        VoiceSession.objects.filter(state__in=FINAL_STATES, report__isnull=True, turns__created_at__lt=cutoff)
        .values_list("id", flat=True)
        .distinct()
    )
    for session_id in list(unreported):
        try:
            session_report_create(session_id=session_id)
            result.reports_built.append(str(session_id))
        except Exception:
            logger.exception("could not build report of %s before retention", session_id)

    finished = Q(session__state__in=FINAL_STATES) & Q(session__report__isnull=False)
    result.turns = _delete_in_batches(old_turns.filter(finished), batch_size)
    result.events = _delete_in_batches(
        SessionEvent.objects.filter(created_at__lt=cutoff, session__state__in=FINAL_STATES), batch_size
    )
    result.webhook_events = _delete_in_batches(
        LiveKitWebhookEvent.objects.filter(received_at__lt=cutoff, processed_at__isnull=False), batch_size
    )
    logger.info(
        "retention: deleted %d turns, %d events, %d webhook events older than %s",
        result.turns,
        result.events,
        result.webhook_events,
        cutoff.isoformat(),
    )
    return result


# --- report backfill -------------------------------------------------------------------------------


def sessions_missing_report(*, now: datetime | None = None, limit: int = 100) -> list[UUID]:
    now = now or timezone.now()
    return list(
        VoiceSession.objects.filter(
            state__in=FINAL_STATES,
            report__isnull=True,
            ended_at__lt=now - timedelta(seconds=settings.REPORT_BACKFILL_AFTER_SECONDS),
        )
        .order_by("ended_at")
        .values_list("id", flat=True)[:limit]
    )


def livekit_webhooks_unprocessed(
    *, now: datetime | None = None, older_than: timedelta = timedelta(minutes=1), limit: int = 200
) -> list[str]:
    """Stored LiveKit webhooks whose processing never completed (enqueue lost, task gave up)."""
    now = now or timezone.now()
    return list(
        LiveKitWebhookEvent.objects.filter(processed_at__isnull=True, received_at__lt=now - older_than)
        .order_by("received_at")
        .values_list("event_id", flat=True)[:limit]
    )
