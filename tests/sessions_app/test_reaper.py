"""The stale-session reaper: a dead agent never leaves a session live forever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import maintenance
from sessions_app.models import SessionEvent, VoiceSession
from sessions_app.tasks import sessions_reap_stale
from tests.factories import make_voice_session

pytestmark = pytest.mark.django_db


def _session(agent, *, state: str, age_s: float, heartbeat_age_s: float | None = None) -> VoiceSession:
    session = make_voice_session(agent, state=state)
    now = timezone.now()
    VoiceSession.objects.filter(pk=session.pk).update(
        created_at=now - timedelta(seconds=age_s),
        last_heartbeat_at=None if heartbeat_age_s is None else now - timedelta(seconds=heartbeat_age_s),
    )
    session.refresh_from_db()
    return session


def test_it_fails_an_active_session_whose_agent_went_silent(
    agent, settings, eager_celery, django_capture_on_commit_callbacks
):
    settings.STALE_SESSION_SECONDS = 60
    dead = _session(agent, state="active", age_s=600, heartbeat_age_s=90)
    alive = _session(agent, state="active", age_s=600, heartbeat_age_s=5)
    reconnecting = _session(agent, state="reconnecting", age_s=600, heartbeat_age_s=300)
    ended = _session(agent, state="ended", age_s=600, heartbeat_age_s=500)

    with django_capture_on_commit_callbacks(execute=True):
        reaped = sessions_reap_stale.delay().get()

    assert sorted(reaped) == sorted([str(dead.id), str(reconnecting.id)])
    dead.refresh_from_db()
    assert dead.state == "failed"
    assert dead.end_reason.startswith("agent heartbeat lost: none for 9")
    assert dead.ended_at is not None
    event = SessionEvent.objects.get(session=dead, type="session.state_changed", payload__to="failed")
    assert event.payload["reaped"] is True
    assert event.payload["from"] == "active"
    assert event.payload["reason"] == dead.end_reason
    assert dead.report is not None  # a failed call still gets its post-call report
    for untouched, state in ((alive, "active"), (ended, "ended")):
        untouched.refresh_from_db()
        assert untouched.state == state


def test_a_session_no_agent_ever_joined_fails_after_the_limit_from_its_creation(agent, settings):
    settings.STALE_SESSION_SECONDS = 60
    abandoned = _session(agent, state="created", age_s=61)
    fresh = _session(agent, state="created", age_s=30)

    assert maintenance.sessions_reap_stale() == [str(abandoned.id)]

    abandoned.refresh_from_db()
    fresh.refresh_from_db()
    assert abandoned.state == "failed"
    assert abandoned.end_reason == "no agent joined within 60 s"
    assert fresh.state == "created"


def test_a_heartbeat_that_lands_after_the_scan_saves_the_session(agent, settings):
    settings.STALE_SESSION_SECONDS = 60
    session = _session(agent, state="active", age_s=600, heartbeat_age_s=120)
    assert maintenance.stale_session_ids() == [session.id]

    VoiceSession.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now())

    assert maintenance.session_reap(session_id=session.id) is False
    session.refresh_from_db()
    assert session.state == "active"


def test_reaping_twice_changes_nothing_the_second_time(agent, settings):
    settings.STALE_SESSION_SECONDS = 60
    session = _session(agent, state="active", age_s=600, heartbeat_age_s=120)

    assert maintenance.sessions_reap_stale() == [str(session.id)]
    assert maintenance.sessions_reap_stale() == []
    assert maintenance.session_reap(session_id=session.id) is False
    assert SessionEvent.objects.filter(session=session, payload__to="failed").count() == 1
