"""The session lifecycle services (sessions_app.lifecycle), the one writer for who is in a call.

The LiveKit webhooks and the local agent host both call them, so these rules hold for
both transports: connection ordering, agent loss and re-dispatch, the agent-join wait.
LiveKit-mode dispatches go to a local double of the server's API (tests/sessions_app/conftest.py).
"""

from __future__ import annotations

import json

import pytest
from django.test import Client, override_settings

from sessions_app import lifecycle
from sessions_app.models import AgentStatus, SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_create, session_transition
from sessions_app.tasks import session_agent_join_check_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager_celery(eager_celery, monkeypatch):
    """Celery tasks run in-process (tests/conftest.py); the agent-join checks (countdown
    tasks, which eager mode would run at once) are only recorded, and the tests run them
    when they mean to."""
    scheduled: list[tuple[str, int]] = []
    monkeypatch.setattr(
        lifecycle, "_join_check_after_commit", lambda session_id, attempt: scheduled.append((str(session_id), attempt))
    )
    return scheduled


@pytest.fixture
def session(agent) -> VoiceSession:
    created, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    return created


def _types(session: VoiceSession) -> list[str]:
    return list(SessionEvent.objects.filter(session=session).order_by("seq").values_list("type", flat=True))


def _state(session: VoiceSession) -> str:
    return VoiceSession.objects.get(pk=session.pk).state


# --- the caller's connections ------------------------------------------------------------------


def test_a_late_leave_of_an_older_connection_keeps_the_session_active(session) -> None:
    lifecycle.session_caller_joined(session_id=session.pk, connection="PA_old", joined_at_ms=1_000, source="webhook")
    lifecycle.session_caller_joined(session_id=session.pk, connection="PA_new", joined_at_ms=2_000, source="webhook")

    changed = lifecycle.session_caller_left(session_id=session.pk, connection="PA_old", reason="SIGNAL_CLOSE")

    assert changed is False and _state(session) == SessionState.ACTIVE
    stale = SessionEvent.objects.filter(session=session, type="caller.left").last()
    assert stale.payload["stale"] is True
    assert lifecycle.session_caller_left(session_id=session.pk, connection="PA_new", reason="CLIENT_INITIATED")
    assert _state(session) == SessionState.RECONNECTING


def test_a_late_join_of_an_older_connection_never_replaces_the_current_one(session) -> None:
    lifecycle.session_caller_joined(session_id=session.pk, connection="PA_new", joined_at_ms=2_000, source="webhook")

    late = lifecycle.session_caller_joined(
        session_id=session.pk, connection="PA_old", joined_at_ms=1_000, source="webhook"
    )

    assert late.applied is False
    assert VoiceSession.objects.get(pk=session.pk).caller_connection == "PA_new"
    lifecycle.session_caller_left(session_id=session.pk, connection="PA_old", reason="SIGNAL_CLOSE")
    assert _state(session) == SessionState.ACTIVE
    assert VoiceSession.objects.get(pk=session.pk).reconnect_count == 0, "a stale join is not a reconnect"


def test_a_caller_joining_an_ended_session_is_refused(session) -> None:
    session_transition(session_id=session.pk, to_state=SessionState.ENDED, reason="client_request")
    with pytest.raises(lifecycle.SessionFinal):
        lifecycle.session_caller_joined(session_id=session.pk, connection="PA_1", joined_at_ms=1, source="local")


# --- the agent ----------------------------------------------------------------------------------


def _active_with_agent(session: VoiceSession, identity: str = "agent-AJ_1") -> None:
    lifecycle.session_caller_joined(session_id=session.pk, connection="PA_1", joined_at_ms=1_000, source="webhook")
    assert lifecycle.session_agent_joined(session_id=session.pk, identity=identity, source="job")


def test_an_agent_lost_while_the_caller_talks_is_dispatched_again_at_once(
    agent, livekit_double, eager_celery, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    _active_with_agent(session)
    with django_capture_on_commit_callbacks(execute=True):
        left = lifecycle.session_agent_left(
            session_id=session.pk, identity="agent-AJ_1", reason="CONNECTION_TIMEOUT", source="webhook"
        )

    assert left.applied and left.redispatch
    assert len(livekit_double.dispatches) == 2, "created, then dispatched again"
    row = VoiceSession.objects.get(pk=session.pk)
    assert row.agent_status == AgentStatus.DISPATCHED and row.agent_dispatch_attempts == 1
    redispatch = SessionEvent.objects.filter(session=session, type="agent.dispatch_requested").last()
    assert "agent lost (CONNECTION_TIMEOUT)" in redispatch.payload["reason"]
    assert json.loads(livekit_double.dispatches[1].metadata) == {"session_id": str(session.pk)}


def test_an_agent_lost_while_the_caller_is_away_is_dispatched_when_the_caller_rejoins(
    agent, livekit_double, eager_celery, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    _active_with_agent(session)
    lifecycle.session_caller_left(session_id=session.pk, connection="PA_1", reason="SIGNAL_CLOSE")
    with django_capture_on_commit_callbacks(execute=True):
        left = lifecycle.session_agent_left(
            session_id=session.pk, identity="agent-AJ_1", reason="CONNECTION_TIMEOUT", source="webhook"
        )
    assert left.applied and not left.redispatch and len(livekit_double.dispatches) == 1

    with django_capture_on_commit_callbacks(execute=True):
        joined = lifecycle.session_caller_joined(
            session_id=session.pk, connection="PA_2", joined_at_ms=5_000, source="webhook"
        )

    assert joined.needs_agent and len(livekit_double.dispatches) == 2


def test_an_agent_leaving_with_its_room_is_not_a_lost_agent(session) -> None:
    _active_with_agent(session)
    lifecycle.session_caller_left(session_id=session.pk, connection="PA_1", reason="CLIENT_INITIATED")

    left = lifecycle.session_agent_left(
        session_id=session.pk, identity="agent-AJ_1", reason="ROOM_CLOSED", source="webhook"
    )

    assert not left.applied and not left.redispatch
    assert "agent.lost" not in _types(session) and "agent.left" in _types(session)
    assert VoiceSession.objects.get(pk=session.pk).agent_status == AgentStatus.NONE


def test_an_older_agents_leave_does_not_touch_the_agent_serving_now(session) -> None:
    _active_with_agent(session, "agent-AJ_1")
    lifecycle.session_agent_left(
        session_id=session.pk, identity="agent-AJ_1", reason="CONNECTION_TIMEOUT", source="job"
    )
    assert lifecycle.session_agent_joined(session_id=session.pk, identity="agent-AJ_2", source="webhook")

    late = lifecycle.session_agent_left(
        session_id=session.pk, identity="agent-AJ_1", reason="CONNECTION_TIMEOUT", source="webhook"
    )

    assert not late.applied
    row = VoiceSession.objects.get(pk=session.pk)
    assert row.agent_status == AgentStatus.JOINED and row.agent_identity == "agent-AJ_2"


def test_the_job_and_the_webhook_reporting_one_join_record_it_once(session) -> None:
    _active_with_agent(session, "agent-AJ_1")
    assert lifecycle.session_agent_joined(session_id=session.pk, identity="agent-AJ_1", source="webhook")
    assert _types(session).count("agent.joined") == 1


def test_a_second_agent_for_one_session_is_refused_and_removed_from_the_room(
    agent, livekit_double, eager_celery, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    _active_with_agent(session, "agent-AJ_1")

    with django_capture_on_commit_callbacks(execute=True):
        serving = lifecycle.session_agent_joined(session_id=session.pk, identity="agent-AJ_2", source="webhook")

    assert serving is False
    assert livekit_double.removed == [(session.room_name, "agent-AJ_2")]
    assert VoiceSession.objects.get(pk=session.pk).agent_identity == "agent-AJ_1"
    assert "agent.duplicate" in _types(session)


def test_an_agent_that_never_joins_is_dispatched_again_then_the_session_fails(
    agent, livekit_double, eager_celery, django_capture_on_commit_callbacks
) -> None:
    with override_settings(AGENT_DISPATCH_ATTEMPTS=2), django_capture_on_commit_callbacks(execute=True):
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    assert eager_celery == [(str(session.pk), 1)], "the dispatch starts the agent-join wait"
    with override_settings(AGENT_DISPATCH_ATTEMPTS=2), django_capture_on_commit_callbacks(execute=True):
        first = session_agent_join_check_task.apply(args=(str(session.pk), 1)).get()
    assert first == "redispatch" and len(livekit_double.dispatches) == 2
    assert eager_celery[-1] == (str(session.pk), 2)

    with override_settings(AGENT_DISPATCH_ATTEMPTS=2), django_capture_on_commit_callbacks(execute=True):
        stale = lifecycle.session_agent_join_check(session_id=session.pk, dispatch=1)
        last = lifecycle.session_agent_join_check(session_id=session.pk, dispatch=2)

    assert stale == "stale" and last == "unavailable"
    row = VoiceSession.objects.get(pk=session.pk)
    assert row.state == SessionState.FAILED and row.end_reason == "agent_unavailable"
    assert row.agent_status == AgentStatus.UNAVAILABLE
    assert "agent.unavailable" in _types(session) and _types(session).count("agent.join_timeout") == 1


def test_a_join_check_after_the_agent_joined_does_nothing(session) -> None:
    VoiceSession.objects.filter(pk=session.pk).update(
        agent_status=AgentStatus.DISPATCHED, agent_dispatch_attempts=1, agent_dispatch_count=1
    )
    _active_with_agent(session)
    assert lifecycle.session_agent_join_check(session_id=session.pk, dispatch=1) == "joined"
    assert _state(session) == SessionState.ACTIVE


def test_an_earlier_dispatchs_check_never_acts_on_a_later_dispatch(
    agent, livekit_double, eager_celery, django_capture_on_commit_callbacks
) -> None:
    """The race seen against the real server: a crash re-dispatches just before the first
    dispatch's check runs; that check must not dispatch a third agent."""
    with django_capture_on_commit_callbacks(execute=True):
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1")
    _active_with_agent(session)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.session_agent_left(
            session_id=session.pk, identity="agent-AJ_1", reason="PARTICIPANT_REMOVED", source="webhook"
        )
    assert [d for _, d in eager_celery] == [1, 2]

    assert lifecycle.session_agent_join_check(session_id=session.pk, dispatch=1) == "stale"
    assert len(livekit_double.dispatches) == 2


def test_the_browser_page_sees_the_agent_status(client: Client, outsider_user, agent) -> None:
    client.force_login(outsider_user)
    created = client.post(
        "/api/v1/browser/sessions", data={"agent": agent.slug}, content_type="application/json"
    ).json()
    VoiceSession.objects.filter(pk=created["session_id"]).update(
        agent_status=AgentStatus.UNAVAILABLE, state=SessionState.FAILED, end_reason="agent_unavailable"
    )
    detail = client.get(f"/api/v1/browser/sessions/{created['session_id']}").json()
    assert detail["agent_status"] == "unavailable" and detail["end_reason"] == "agent_unavailable"
