"""`sessions_app.turns.turn_record`: the one writer of turns, turn metrics and turn events."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from sessions_app.models import SessionEvent, Turn, VoiceSession
from sessions_app.turns import turn_breaches, turn_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(agent) -> VoiceSession:
    return VoiceSession.objects.create(
        caller_id="c1",
        room_name=f"room-{uuid.uuid4()}",
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_it_flags_only_the_stages_over_budget():
    budgets = {"eou": 500, "stt": 300, "e2e": 1500}
    assert turn_breaches(stages_ms={"eou": 501, "stt": 300, "e2e": None, "tool": 9999}, budgets_ms=budgets) == ["eou"]


def test_it_stores_the_turn_and_updates_the_session(session, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        turn = turn_record(
            session_id=session.id,
            data={
                "index": 1,
                "user_text": "hello",
                "generated_text": "Hi there, how can I help you today?",
                "heard_text": "Hi there,",
                "interrupted": True,
                "interrupt_source": "client",
                "eou_ms": 700.0,
                "stt_ms": 120.0,
                "e2e_ms": 2000.0,
                "tool_calls": [{"name": "place_order", "latency_ms": 12.5}],
                "tool_ms": 12.5,
                "started_at": 1_700_000_000.0,
            },
        )
    turn.refresh_from_db()
    assert turn.heard_text == "Hi there," and turn.interrupted and turn.interrupt_source == "client"
    assert turn.breaches == ["eou", "e2e"]
    assert turn.tool_calls == [{"name": "place_order", "latency_ms": 12.5}]
    session.refresh_from_db()
    assert (session.turn_count, session.interrupt_count, session.last_e2e_ms) == (1, 1, 2000.0)
    event = SessionEvent.objects.get(session=session, type="turn.completed")
    assert event.payload["index"] == 1 and event.payload["breaches"] == ["eou", "e2e"]


def test_it_observes_metrics_only_after_the_commit(session, django_capture_on_commit_callbacks):
    labels = {"agent": session.agent.slug, "interrupted": "false"}
    before = _sample("voice_turns_total", **labels)
    breaches_before = _sample("voice_budget_breaches_total", stage="e2e", agent=session.agent.slug)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        turn_record(session_id=session.id, data={"index": 0, "generated_text": "Hello", "e2e_ms": 5000})
    assert _sample("voice_turns_total", **labels) == before  # nothing before the commit
    for callback in callbacks:
        callback()
    assert _sample("voice_turns_total", **labels) == before + 1
    assert _sample("voice_budget_breaches_total", stage="e2e", agent=session.agent.slug) == breaches_before + 1


def test_recording_the_same_index_twice_keeps_one_turn_and_counts_once(session, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        turn_record(session_id=session.id, data={"index": 3, "user_text": "a"})
        turn_record(session_id=session.id, data={"index": 3, "user_text": "b"})
    assert list(Turn.objects.filter(session=session).values_list("user_text", flat=True)) == ["a"]
    session.refresh_from_db()
    assert session.turn_count == 1


def test_an_uninterrupted_turn_has_no_interrupt_source(session):
    turn = turn_record(session_id=session.id, data={"index": 0, "interrupt_source": "client"})
    assert not turn.interrupted and turn.interrupt_source == ""


def test_it_publishes_turn_completed_after_commit(session, django_capture_on_commit_callbacks, monkeypatch):
    from sessions_app import broadcast

    sent: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(
        broadcast, "publish_many", lambda groups, messages: sent.extend((list(groups), m) for m in messages)
    )
    with django_capture_on_commit_callbacks(execute=True):
        turn_record(session_id=session.id, data={"index": 0, "generated_text": "Hello", "e2e_ms": 800})
    turn_messages = [m for _, m in sent if m["type"] == "turn.completed"]
    assert len(turn_messages) == 1
    message = turn_messages[0]
    assert message["session_id"] == str(session.id)
    assert message["turn"]["stages_ms"]["e2e"] == 800.0 and message["turn"]["generated_text"] == "Hello"
    assert message["seq"] == SessionEvent.objects.get(session=session, type="turn.completed").seq
    groups = next(g for g, m in sent if m["type"] == "turn.completed")
    assert groups == broadcast.session_groups(session.id)
    # One batch per turn, in order: the event, the turn, the row.
    assert [m["type"] for _, m in sent] == ["event.added", "turn.completed", "session.updated"]
