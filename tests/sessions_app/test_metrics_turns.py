"""Voice metrics on the web /metrics endpoint, fed only by recorded turns."""

from __future__ import annotations

import pytest
from django.db import transaction

from agents_app.models import Agent
from sessions_app.metrics import LATENCY_BUCKETS
from sessions_app.models import VoiceSession
from sessions_app.turns import turn_record
from tests.factories import make_fresh_agent, make_voice_session
from tests.metrics_text import metric_samples, metric_value

pytestmark = pytest.mark.django_db


def _fresh_agent(**budgets: int) -> Agent:
    return make_fresh_agent(name="Metrics agent", **budgets)


def _scrape(client) -> dict[str, list]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return metric_samples(response.content.decode())


def _record(session: VoiceSession, captured, index: int, **data) -> None:
    with captured(execute=True):
        turn_record(session_id=session.id, data={"index": index, **data})


def test_it_exposes_stage_histograms_with_the_right_counts_after_a_call(client, django_capture_on_commit_callbacks):
    agent = _fresh_agent()
    session = make_voice_session(agent, state="active")
    _record(session, django_capture_on_commit_callbacks, 0, user_text="hi", e2e_ms=120, tts_ttfb_ms=80, llm_ttft_ms=200)
    _record(session, django_capture_on_commit_callbacks, 1, user_text="order", e2e_ms=900, tts_ttfb_ms=90, tool_ms=350)
    _record(
        session,
        django_capture_on_commit_callbacks,
        2,
        user_text="bye",
        e2e_ms=4000,
        stt_ms=150,
        interrupted=True,
        interrupt_source="client",
    )

    samples = _scrape(client)

    count = "voice_turn_stage_seconds_count"
    assert metric_value(samples, count, stage="e2e", agent=agent.slug) == 3
    assert metric_value(samples, count, stage="tts_ttfb", agent=agent.slug) == 2
    assert metric_value(samples, count, stage="llm_ttft", agent=agent.slug) == 1
    assert metric_value(samples, count, stage="tool", agent=agent.slug) == 1
    assert metric_value(samples, count, stage="stt", agent=agent.slug) == 1
    assert metric_value(samples, count, stage="eou", agent=agent.slug) == 0  # never measured, never observed
    assert metric_value(samples, "voice_turn_stage_seconds_sum", stage="e2e", agent=agent.slug) == pytest.approx(5.02)
    # Cumulative buckets: 0.12 s is within le=0.15, 0.9 s within le=1.0, 4 s only within le=5.0.
    bucket = "voice_turn_stage_seconds_bucket"
    assert metric_value(samples, bucket, stage="e2e", agent=agent.slug, le="0.1") == 0
    assert metric_value(samples, bucket, stage="e2e", agent=agent.slug, le="0.15") == 1
    assert metric_value(samples, bucket, stage="e2e", agent=agent.slug, le="1.0") == 2
    assert metric_value(samples, bucket, stage="e2e", agent=agent.slug, le="5.0") == 3
    assert metric_value(samples, "voice_interrupts_total", agent=agent.slug, source="client") == 1
    assert metric_value(samples, "voice_interrupts_total", agent=agent.slug, source="vad") == 0
    assert metric_value(samples, "voice_turns_total", agent=agent.slug) == 3


def test_a_breach_is_counted_once_per_turn_and_stage(client, django_capture_on_commit_callbacks):
    agent = _fresh_agent(budget_e2e_ms=500, budget_tts_ttfb_ms=100)
    session = make_voice_session(agent, state="active")
    _record(session, django_capture_on_commit_callbacks, 0, e2e_ms=800, tts_ttfb_ms=150, stt_ms=100)
    # The writer retrying the same turn must not count it again.
    _record(session, django_capture_on_commit_callbacks, 0, e2e_ms=800, tts_ttfb_ms=150, stt_ms=100)
    _record(session, django_capture_on_commit_callbacks, 1, e2e_ms=700, tts_ttfb_ms=50)
    _record(session, django_capture_on_commit_callbacks, 2, e2e_ms=300)

    samples = _scrape(client)

    breaches = "voice_budget_breaches_total"
    assert metric_value(samples, breaches, stage="e2e", agent=agent.slug) == 2
    assert metric_value(samples, breaches, stage="tts_ttfb", agent=agent.slug) == 1
    assert metric_value(samples, breaches, stage="stt", agent=agent.slug) == 0
    assert metric_value(samples, "voice_turn_stage_seconds_count", stage="e2e", agent=agent.slug) == 3
    assert session.turns.get(index=0).breaches == ["tts_ttfb", "e2e"]


def test_a_rolled_back_turn_never_reaches_prometheus(client, django_capture_on_commit_callbacks):
    agent = _fresh_agent()
    session = make_voice_session(agent, state="active")
    with pytest.raises(RuntimeError), django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        turn_record(session_id=session.id, data={"index": 0, "e2e_ms": 100})
        raise RuntimeError("the surrounding write failed")

    assert not session.turns.exists()

    assert metric_value(_scrape(client), "voice_turn_stage_seconds_count", agent=agent.slug) == 0


def test_latency_buckets_span_50_ms_to_5_s():
    assert LATENCY_BUCKETS[0] == 0.05
    assert LATENCY_BUCKETS[-1] == 5.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_the_web_metrics_endpoint_also_serves_django_metrics(client):
    client.get("/healthz")
    samples = _scrape(client)
    assert any(name.startswith("django_http_requests") for name in samples)
