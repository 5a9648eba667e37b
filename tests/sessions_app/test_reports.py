"""Post-call reports: KPIs, extractive summary, stored once when a call ends."""

from __future__ import annotations

import pytest

from sessions_app import reports
from sessions_app.models import SessionEvent, Turn, VoiceSession
from sessions_app.services import session_transition
from sessions_app.tasks import session_post_call_report
from tests.factories import make_voice_session as _session

pytestmark = pytest.mark.django_db


def _turn(session, index, **fields) -> Turn:
    return Turn.objects.create(session=session, index=index, **fields)


def _call(agent) -> VoiceSession:
    session = _session(agent, state="active", reconnect_count=1)
    _turn(
        session,
        0,
        user_text="Hello. I want to order two large pizzas for delivery to Baker Street.",
        generated_text="Sure, two large pizzas to Baker Street. Which toppings would you like?",
        heard_text="Sure, two large pizzas to Baker Street. Which toppings would you like?",
        e2e_ms=800,
        ttfa_ms=700,
        tts_ttfb_ms=120,
        breaches=["e2e"],
        tool_calls=[{"name": "place_order", "status": "succeeded", "replayed": False}],
    )
    _turn(
        session,
        1,
        user_text="Mushrooms on both pizzas please.",
        generated_text="Mushrooms on both. Your order of two pizzas is placed and will arrive in thirty minutes.",
        heard_text="Mushrooms on both.",
        interrupted=True,
        interrupt_source="vad",
        e2e_ms=1000,
        ttfa_ms=900,
        tts_ttfb_ms=100,
        breaches=["e2e", "ttfa"],
        tool_calls=[{"name": "place_order", "status": "succeeded", "replayed": True}],
    )
    _turn(
        session,
        2,
        user_text="Thanks, bye.",
        generated_text="Goodbye!",
        e2e_ms=1200,
        interrupted=True,
        interrupt_source="client",
    )
    _turn(session, 3, user_text="", generated_text="", e2e_ms=3000, error="tts failed")
    return session


def test_percentile_interpolates_like_numpy():
    assert reports.percentile([800, 1000, 1200, 3000], 50) == 1100
    assert reports.percentile([800, 1000, 1200, 3000], 95) == pytest.approx(2730)
    assert reports.percentile([42], 95) == 42
    assert reports.percentile([], 50) is None


def test_the_report_holds_the_call_kpis(agent):
    session = _call(agent)
    session_transition(session_id=session.id, to_state="ended", reason="caller hung up")
    session.refresh_from_db()

    report = reports.report_build(session=session)
    kpis = report["kpis"]

    assert kpis["turns"] == 4
    assert kpis["e2e_ms"] == {"count": 4, "p50": 1100, "p95": pytest.approx(2730)}
    assert kpis["ttfa_ms"]["p50"] == 800
    assert kpis["tts_ttfb_ms"]["count"] == 2
    assert kpis["interrupts"] == {"total": 2, "vad": 1, "client": 1, "per_turn": 0.5}
    assert kpis["reconnects"] == 1
    assert kpis["tool_calls"] == {"total": 2, "by_status": {"succeeded": 2}, "replayed": 1}
    assert kpis["budget_breaches"] == {"total": 3, "turns_with_breach": 2, "by_stage": {"ttfa": 1, "e2e": 2}}
    assert kpis["errors"] == 1
    assert report["end_reason"] == "caller hung up"


def test_the_summary_is_extractive_ordered_and_uses_what_the_caller_heard(agent):
    session = _call(agent)
    lines = reports.transcript_lines(list(session.turns.order_by("index")))
    summary = reports.extractive_summary(lines)

    assert 1 <= len(summary) <= reports.SUMMARY_MAX_SENTENCES
    assert summary[0] == "Caller: I want to order two large pizzas for delivery to Baker Street."
    every_sentence = {f"{speaker}: {s}" for speaker, text in lines for s in reports._sentences(text)}
    assert set(summary) <= every_sentence  # extractive: nothing invented
    # The interrupted turn contributes only what was heard, never the cut-off remainder.
    assert not any("thirty minutes" in line for line in summary)
    assert ("Agent", "Mushrooms on both.") in lines


def test_an_empty_call_gets_an_empty_summary(agent):
    assert reports.extractive_summary([]) == []
    session = _session(agent, state="ended")
    report = reports.report_build(session=session)
    assert report["summary"] == ""
    assert report["kpis"]["turns"] == 0
    assert report["kpis"]["e2e_ms"]["p95"] is None


def test_ending_a_call_stores_its_report_once(agent, eager_celery_with_retries, django_capture_on_commit_callbacks):
    session = _call(agent)
    with django_capture_on_commit_callbacks(execute=True):
        session_transition(session_id=session.id, to_state="ended", reason="done")
    session.refresh_from_db()

    assert session.report is not None
    assert session.report["kpis"]["turns"] == 4
    assert session.report["summary"].startswith("Caller: I want to order two large pizzas")
    assert session.report_delivery_id is not None
    first = (session.report, session.report_delivery_id)

    # A redelivered task changes nothing: same report, same delivery id, one event.
    result = session_post_call_report.delay(str(session.id)).get()
    session.refresh_from_db()
    assert result["status"] == "exists"
    assert (session.report, session.report_delivery_id) == first
    assert SessionEvent.objects.filter(session=session, type="session.report_ready").count() == 1


def test_a_live_session_gets_no_report(agent, eager_celery_with_retries):
    session = _session(agent, state="active")
    assert session_post_call_report.delay(str(session.id)).get() == {"status": "not_ready"}
    session.refresh_from_db()
    assert session.report is None
