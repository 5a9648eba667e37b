"""Celery tasks of the sessions app. Tasks take ids, load rows, call services.

Every task is idempotent, because the broker delivers at least once (acks_late, and a
killed worker's message comes back after the visibility timeout):

- `session_post_call_report`: the report is stored once (kept if present), then the
  webhook delivery is queued if the client has a webhook and it was not delivered.
- `session_report_webhook_deliver`: skips when already delivered; sends only under the
  session's send lease (one attempt at a time, none after a recorded success); retries with
  exponential backoff, always with the session's one delivery id.
- `livekit_webhook_process`: de-duplicated on the LiveKit event id (`processed_at`),
  under a row lock.
- `sessions_reap_stale`, `retention_purge_task`, `session_reports_backfill`: periodic
  (beat), re-checking their conditions row by row.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from sessions_app import maintenance, reports
from sessions_app.models import LiveKitWebhookEvent, VoiceSession
from voiceplatform.logging import log_context

logger = logging.getLogger(__name__)

REPORT_WEBHOOK_MAX_RETRIES = 7  # 8 attempts over roughly 15 minutes
REPORT_WEBHOOK_BACKOFF_BASE_S = 10
REPORT_WEBHOOK_BACKOFF_MAX_S = 300


def delivery_backoff_seconds(retries: int) -> int:
    """Exponential backoff with ±20 % jitter, capped below the broker visibility timeout.

    A retry waits on the worker as an unacknowledged ETA message; if it waited longer
    than the visibility timeout, Redis would hand it to a second worker as well.
    """
    visibility = int(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600))
    cap = max(1, min(REPORT_WEBHOOK_BACKOFF_MAX_S, visibility // 2))
    delay = min(cap, REPORT_WEBHOOK_BACKOFF_BASE_S * 2**retries)
    return max(1, min(cap, round(delay * random.uniform(0.8, 1.2))))


@shared_task(
    name="sessions_app.tasks.session_post_call_report",
    autoretry_for=(OperationalError,),
    max_retries=5,
    retry_backoff=True,
)
def session_post_call_report(session_id: str) -> dict[str, Any]:
    with log_context(session_id=session_id):
        try:
            session, created = reports.session_report_create(session_id=session_id)
        except reports.ReportNotReady as exc:
            logger.warning("no report yet: %s", exc)
            return {"status": "not_ready"}
        except VoiceSession.DoesNotExist:
            # Deleted (retention, an operator) after the task was queued: nothing to report.
            logger.warning("no report: the session no longer exists")
            return {"status": "gone"}
        client = session.api_client
        queued = False
        if client is not None and client.webhook_url and session.report_delivered_at is None:
            # Queued after commit even when the report already existed: a redelivered
            # task may be the one whose first run died before this line.
            transaction.on_commit(lambda: session_report_webhook_deliver.delay(session_id))
            queued = True
        return {"status": "created" if created else "exists", "delivery_queued": queued}


@shared_task(
    bind=True, name="sessions_app.tasks.session_report_webhook_deliver", max_retries=REPORT_WEBHOOK_MAX_RETRIES
)
def session_report_webhook_deliver(self: Any, session_id: str) -> dict[str, Any]:
    attempt = self.request.retries + 1
    with log_context(session_id=session_id):
        try:
            # The same holder for a redelivered message (same id, same retry), a new one per retry.
            holder = f"{self.request.id}:{self.request.retries}"
            outcome = reports.session_report_deliver(session_id=session_id, attempt=attempt, holder=holder)
        except VoiceSession.DoesNotExist:
            logger.warning("report not delivered: the session no longer exists")
            return {"status": "gone", "attempts": attempt}
        if outcome.status == "failed":
            reports.session_report_delivery_failed(session_id=session_id, attempts=attempt, detail=outcome.detail)
        elif outcome.status == "busy":
            # Another attempt holds the send lease: look again once it lapses. If that one
            # delivers, this finds it delivered; if it dies, this may send.
            if self.request.retries >= self.max_retries:
                return {"status": "busy", "attempts": attempt}
            raise self.retry(countdown=max(1, math.ceil(outcome.retry_in_s or 0) + 1))
        elif outcome.status == "retry":
            if self.request.retries >= self.max_retries:
                reports.session_report_delivery_failed(session_id=session_id, attempts=attempt, detail=outcome.detail)
                return {"status": "failed", "attempts": attempt, "detail": outcome.detail}
            raise self.retry(countdown=delivery_backoff_seconds(self.request.retries))
        return {"status": outcome.status, "attempts": attempt, "http_status": outcome.http_status}


def _webhook_event_process(*, event_id: str) -> None:
    """The state changes of one LiveKit webhook (service owned by sessions_app.webhooks)."""
    from sessions_app.webhooks import webhook_event_process

    webhook_event_process(event_id=event_id)


@shared_task(
    name="sessions_app.tasks.livekit_webhook_process",
    autoretry_for=(OperationalError,),
    max_retries=5,
    retry_backoff=True,
)
def livekit_webhook_process(event_id: str) -> str:
    """Apply a stored LiveKit webhook once, whatever the number of deliveries."""
    with transaction.atomic():
        event = LiveKitWebhookEvent.objects.select_for_update().filter(event_id=event_id).first()
        if event is None:
            logger.warning("LiveKit webhook event %s not found", event_id)
            return "missing"
        if event.processed_at is not None:
            return "duplicate"
        with log_context(room=event.room_name or None):
            _webhook_event_process(event_id=event_id)
        LiveKitWebhookEvent.objects.filter(pk=event.pk, processed_at__isnull=True).update(processed_at=timezone.now())
    return "processed"


@shared_task(
    name="sessions_app.tasks.session_agent_dispatch",
    autoretry_for=(OperationalError,),
    max_retries=3,
    retry_backoff=True,
)
def session_agent_dispatch_task(session_id: str, reason: str = "") -> str:
    """Dispatch the agent again (LiveKit). A repeated delivery dispatches again: the
    platform removes an extra agent when two join (sessions_app.lifecycle)."""
    from sessions_app.lifecycle import session_agent_dispatch

    with log_context(session_id=session_id):
        session = session_agent_dispatch(session_id=session_id, reason=reason)
    return "skipped" if session is None else "dispatched"


@shared_task(
    name="sessions_app.tasks.session_agent_join_check",
    autoretry_for=(OperationalError,),
    max_retries=3,
    retry_backoff=True,
)
def session_agent_join_check_task(session_id: str, dispatch: int) -> str:
    """The agent-join wait of one dispatch ran out (idempotent: keyed on the dispatch number)."""
    from sessions_app.lifecycle import session_agent_join_check

    with log_context(session_id=session_id):
        return session_agent_join_check(session_id=session_id, dispatch=dispatch)


@shared_task(name="sessions_app.tasks.sessions_reap_stale")
def sessions_reap_stale() -> list[str]:
    return maintenance.sessions_reap_stale()


@shared_task(name="sessions_app.tasks.retention_purge")
def retention_purge_task() -> dict[str, Any]:
    result = maintenance.retention_purge()
    return {
        "cutoff": result.cutoff.isoformat(),
        "turns": result.turns,
        "events": result.events,
        "webhook_events": result.webhook_events,
        "reports_built": len(result.reports_built),
    }


@shared_task(name="sessions_app.tasks.session_reports_backfill")
def session_reports_backfill() -> list[str]:
    """Queue reports of finished sessions whose enqueue was lost."""
    ids = [str(session_id) for session_id in maintenance.sessions_missing_report()]
    for session_id in ids:
        session_post_call_report.delay(session_id)
    if ids:
        logger.warning("re-queued %d missing post-call reports", len(ids))
    return ids


@shared_task(name="sessions_app.tasks.livekit_webhooks_backfill")
def livekit_webhooks_backfill() -> list[str]:
    """Queue stored LiveKit webhooks that were never processed (de-duplication makes this safe)."""
    ids = maintenance.livekit_webhooks_unprocessed()
    for event_id in ids:
        livekit_webhook_process.delay(event_id)
    if ids:
        logger.warning("re-queued %d unprocessed LiveKit webhooks", len(ids))
    return ids
