"""KPIs of the dashboard: percentiles, per-session rates, breakdowns per agent and prompt version."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.dashboard_selectors import dashboard_kpis, percentile
from sessions_app.models import Turn, VoiceSession
from sessions_app.turns import turn_record
from tests.factories import make_voice_session as _session

pytestmark = pytest.mark.django_db


def test_percentile_is_nearest_rank_over_measured_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile([300.0], 95) == 300
    assert percentile([], 50) is None


def test_kpis_count_rates_per_session_and_breaches_per_turn(agent) -> None:
    a = _session(agent, reconnect_count=2)
    b = _session(agent)
    e2e = [400, 500, 600, 700, 2000]
    for i, value in enumerate(e2e[:3], start=1):
        turn_record(session_id=a.id, data={"index": i, "e2e_ms": value, "ttfa_ms": value - 100, "interrupted": i == 2})
    for i, value in enumerate(e2e[3:], start=1):
        turn_record(session_id=b.id, data={"index": i, "e2e_ms": value, "ttfa_ms": value - 100})

    overall = dashboard_kpis(window="5m")["overall"]
    assert (overall["turns"], overall["sessions"]) == (5, 2)
    assert (overall["e2e_p50_ms"], overall["e2e_p95_ms"]) == (600, 2000)
    assert (overall["ttfa_p50_ms"], overall["ttfa_p95_ms"]) == (500, 1900)
    assert overall["interrupts_per_session"] == 0.5
    assert overall["reconnects_per_session"] == 1.0
    # Only the 2000 ms turn is over the default 1000 ms e2e (and 900 ms TTFA) budgets.
    assert (overall["breached_turns"], overall["breach_rate"]) == (1, 0.2)


def test_kpis_break_down_per_agent_and_per_prompt_version(agent) -> None:
    old = _session(agent)
    turn_record(session_id=old.id, data={"index": 1, "e2e_ms": 1800})
    # A prompt change: the new version's sessions must show apart from the old one's.
    prompt_publish(
        version=prompt_draft_create(
            agent=agent, instructions="Be briefer.", greeting="", variables={}, change_note="v2"
        )
    )
    new = _session(agent)
    turn_record(session_id=new.id, data={"index": 1, "e2e_ms": 600})
    other_agent = Agent.objects.create(slug="sales", name="Sales agent")
    prompt_publish(
        version=prompt_draft_create(agent=other_agent, instructions="Sell.", greeting="", variables={}, change_note="")
    )
    turn_record(session_id=_session(other_agent).id, data={"index": 1, "e2e_ms": 900})

    kpis = dashboard_kpis(window="1h")
    by_agent = {row["agent"]: row for row in kpis["by_agent"]}
    assert by_agent["support"]["turns"] == 2 and by_agent["sales"]["turns"] == 1
    by_prompt = {(row["agent"], row["prompt_version"]): row for row in kpis["by_prompt"]}
    assert by_prompt[("support", 1)]["e2e_p50_ms"] == 1800
    assert by_prompt[("support", 1)]["breach_rate"] == 1.0
    assert by_prompt[("support", 2)]["e2e_p50_ms"] == 600
    assert by_prompt[("support", 2)]["breach_rate"] == 0.0
    # Newest prompt version first within an agent.
    assert [(r["agent"], r["prompt_version"]) for r in kpis["by_prompt"]] == [
        ("sales", 1),
        ("support", 2),
        ("support", 1),
    ]


def test_kpis_leave_out_turns_and_sessions_older_than_the_window(agent) -> None:
    session = _session(agent)
    turn_record(session_id=session.id, data={"index": 1, "e2e_ms": 5000})
    hour_ago = timezone.now() - timedelta(minutes=30)
    Turn.objects.filter(session=session).update(created_at=hour_ago)
    VoiceSession.objects.filter(pk=session.pk).update(created_at=hour_ago)

    assert dashboard_kpis(window="5m")["overall"]["turns"] == 0
    assert dashboard_kpis(window="5m")["overall"]["sessions"] == 0
    assert dashboard_kpis(window="1h")["overall"]["e2e_p95_ms"] == 5000


def test_kpis_refuse_an_unknown_window() -> None:
    with pytest.raises(ValueError, match="window must be one of"):
        dashboard_kpis(window="2d")
