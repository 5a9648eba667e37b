"""The LiveKit webhook task: state changes applied once per event id."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import tasks
from sessions_app.models import LiveKitWebhookEvent, VoiceSession

pytestmark = pytest.mark.django_db


def test_a_redelivered_event_is_applied_once(eager_celery, monkeypatch):
    LiveKitWebhookEvent.objects.create(event_id="EV_1", event="room_finished", room_name="r1")
    calls: list[str] = []
    monkeypatch.setattr(tasks, "_webhook_event_process", lambda *, event_id: calls.append(event_id))

    first = tasks.livekit_webhook_process.delay("EV_1").get()
    second = tasks.livekit_webhook_process.delay("EV_1").get()

    assert (first, second) == ("processed", "duplicate")
    assert calls == ["EV_1"]
    assert LiveKitWebhookEvent.objects.get(event_id="EV_1").processed_at is not None


def test_a_failed_processing_leaves_the_event_for_a_retry(eager_celery, monkeypatch):
    LiveKitWebhookEvent.objects.create(event_id="EV_2", event="participant_joined", room_name="r2")

    def boom(*, event_id: str) -> None:
        raise RuntimeError("database said no")

    monkeypatch.setattr(tasks, "_webhook_event_process", boom)
    with pytest.raises(RuntimeError):
        tasks.livekit_webhook_process.delay("EV_2").get()
    assert LiveKitWebhookEvent.objects.get(event_id="EV_2").processed_at is None


def test_an_unknown_event_id_is_reported_missing(eager_celery):
    assert tasks.livekit_webhook_process.delay("nope").get() == "missing"


def test_it_drives_the_real_webhook_service(agent, eager_celery, django_capture_on_commit_callbacks):
    session = VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        caller_id="caller",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        state="active",
    )
    LiveKitWebhookEvent.objects.create(event_id="EV_3", event="room_finished", room_name=session.room_name)

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.livekit_webhook_process.delay("EV_3").get() == "processed"
        assert tasks.livekit_webhook_process.delay("EV_3").get() == "duplicate"

    assert LiveKitWebhookEvent.objects.get(event_id="EV_3").processed_at is not None
    session.refresh_from_db()
    assert (session.state, session.end_reason) == ("ended", "room_finished")
    assert session.events.filter(type="room.finished").count() == 1


def test_the_backfill_requeues_only_old_unprocessed_events(eager_celery, monkeypatch):
    old = LiveKitWebhookEvent.objects.create(event_id="EV_old", event="room_finished")
    LiveKitWebhookEvent.objects.create(event_id="EV_new", event="room_finished")
    LiveKitWebhookEvent.objects.create(event_id="EV_done", event="room_finished", processed_at=timezone.now())
    LiveKitWebhookEvent.objects.filter(event_id__in=["EV_old", "EV_done"]).update(
        received_at=timezone.now() - timedelta(minutes=5)
    )
    calls: list[str] = []
    monkeypatch.setattr(tasks, "_webhook_event_process", lambda *, event_id: calls.append(event_id))

    assert tasks.livekit_webhooks_backfill.delay().get() == [old.event_id]
    assert calls == ["EV_old"]
