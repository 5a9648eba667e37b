"""Retention: old events and turns go, in batches; sessions keep their report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import maintenance
from sessions_app.models import LiveKitWebhookEvent, SessionEvent, Turn, VoiceSession
from sessions_app.reports import session_report_create
from sessions_app.services import session_event_append
from sessions_app.tasks import retention_purge_task
from tests.factories import make_voice_session as _session
from voiceplatform.celery import app as celery_app

pytestmark = pytest.mark.django_db


def _age(model, queryset, days: float) -> None:
    queryset.update(
        **{"received_at" if model is LiveKitWebhookEvent else "created_at": timezone.now() - timedelta(days=days)}
    )


def _with_history(session: VoiceSession, *, turns: int, days_old: float) -> None:
    for index in range(turns):
        Turn.objects.create(session=session, index=index, user_text=f"please order item {index}", e2e_ms=700 + index)
        session_event_append(session_id=session.id, type="turn.completed", payload={"index": index})
    _age(Turn, Turn.objects.filter(session=session), days_old)
    _age(SessionEvent, SessionEvent.objects.filter(session=session), days_old)


def test_it_deletes_old_events_and_turns_in_batches_and_keeps_reports(agent, settings):
    settings.RETENTION_DAYS = 30
    old = _session(agent, state="ended")
    _with_history(old, turns=5, days_old=40)
    session_report_create(session_id=old.id)
    recent = _session(agent, state="ended")
    _with_history(recent, turns=3, days_old=5)

    result = maintenance.retention_purge(batch_size=2)

    assert result.turns == 5
    assert result.events == 5
    assert not Turn.objects.filter(session=old).exists()
    assert not SessionEvent.objects.filter(session=old, type="turn.completed").exists()
    assert Turn.objects.filter(session=recent).count() == 3
    assert SessionEvent.objects.filter(session=recent).count() == 3
    old.refresh_from_db()
    assert old.report["kpis"]["turns"] == 5  # the session and its report stay


def test_it_builds_a_missing_report_before_deleting_the_turns(agent, settings):
    settings.RETENTION_DAYS = 30
    unreported = _session(agent, state="failed")
    _with_history(unreported, turns=4, days_old=90)

    result = maintenance.retention_purge()

    unreported.refresh_from_db()
    assert result.reports_built == [str(unreported.id)]
    assert unreported.report["kpis"]["turns"] == 4
    assert unreported.report["kpis"]["e2e_ms"]["count"] == 4
    assert not Turn.objects.filter(session=unreported).exists()


def test_a_live_session_keeps_its_history_whatever_its_age(agent, settings):
    settings.RETENTION_DAYS = 30
    live = _session(agent, state="active")
    _with_history(live, turns=2, days_old=60)

    maintenance.retention_purge()

    assert Turn.objects.filter(session=live).count() == 2
    assert SessionEvent.objects.filter(session=live).count() == 2


def test_it_deletes_only_processed_old_livekit_webhooks(settings):
    settings.RETENTION_DAYS = 30
    processed = LiveKitWebhookEvent.objects.create(
        event_id="old-done", event="room_finished", processed_at=timezone.now()
    )
    pending = LiveKitWebhookEvent.objects.create(event_id="old-pending", event="room_finished")
    fresh = LiveKitWebhookEvent.objects.create(event_id="fresh", event="room_finished", processed_at=timezone.now())
    _age(LiveKitWebhookEvent, LiveKitWebhookEvent.objects.filter(pk__in=[processed.pk, pending.pk]), 45)

    celery_app.conf.task_always_eager = True
    try:
        summary = retention_purge_task.delay().get()
    finally:
        celery_app.conf.task_always_eager = False

    assert summary["webhook_events"] == 1
    assert set(LiveKitWebhookEvent.objects.values_list("event_id", flat=True)) == {pending.event_id, fresh.event_id}
