"""The JSON summary: counts and per-stage percentiles over every stored turn."""

from __future__ import annotations

from agents_app.runtime.simulator.caller import CallResult
from agents_app.runtime.simulator.summary import SUMMARY_STAGES, percentile, summarize


def _turn(
    index: int,
    *,
    e2e: float | None = None,
    interrupted: bool = False,
    tools: list | None = None,
    breaches: list | None = None,
) -> dict:
    stages = {stage: None for stage in ("eou", "stt", "llm_ttft", "tool", "tts_ttfb", "ttfa", "e2e")}
    stages["e2e"] = e2e
    return {
        "index": index,
        "interrupted": interrupted,
        "tool_calls": tools or [],
        "breaches": breaches or [],
        "stages_ms": stages,
    }


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_it_counts_turns_interruptions_reconnects_tools_and_breaches() -> None:
    ok = CallResult(scenario="tool", number=1, session_id="s1", ok=True)
    ok.detail = {
        "reconnect_count": 1,
        "turns": [
            _turn(0, e2e=None),
            _turn(1, e2e=800.0, tools=[{"name": "place_order", "replayed": False}], breaches=["e2e"]),
            _turn(2, e2e=400.0, interrupted=True, breaches=["stt", "e2e"]),
        ],
    }
    ok.tool_retries = [{"name": "place_order", "replayed": True}]
    failed = CallResult(scenario="basic", number=2, session_id="s2", ok=False, error="boom")
    failed.detail = {"reconnect_count": 0, "turns": [_turn(0), _turn(1, e2e=600.0)]}
    summary = summarize([ok, failed])
    assert summary["calls"] == 2 and summary["completed"] == 1 and summary["failed"] == 1
    assert summary["turns"] == 5
    assert summary["interrupted_turns"] == 1
    assert summary["reconnects"] == 1
    assert summary["tool_calls"] == 2 and summary["tool_replays"] == 1
    assert summary["budget_breaches"] == 3
    assert set(summary["stage_ms"]) == set(SUMMARY_STAGES)
    assert summary["stage_ms"]["e2e"] == {"p50": 600.0, "p95": 800.0}
    assert summary["stage_ms"]["tool"] == {"p50": None, "p95": None}
    assert summary["session_ids"] == ["s1", "s2"]
    assert len(summary["errors"]) == 1 and "boom" in summary["errors"][0] and "s2" in summary["errors"][0]


def test_a_call_that_never_created_a_session_is_a_failure_without_an_id() -> None:
    result = CallResult(scenario="basic", number=1, ok=False, error="HTTP 0 unreachable")
    summary = summarize([result])
    assert summary["failed"] == 1 and summary["session_ids"] == [] and "unreachable" in summary["errors"][0]


def test_it_reports_the_caller_heard_gaps_their_differences_and_the_mismatches() -> None:
    def heard(index: int, gap: float | None, *, difference: float | None = None, mismatch=False, barge_in=None):
        return {
            **_turn(index, e2e=800.0),
            "heard_gap_ms": gap,
            "heard_difference_ms": difference,
            "heard_mismatch": mismatch,
            "heard_barge_in_ms": barge_in,
        }

    one = CallResult(scenario="basic", number=1, session_id="s1", ok=True)
    one.detail = {
        "turns": [
            heard(0, None),
            *(heard(i, 1000.0 + i, difference=200.0 + i) for i in range(1, 99)),
            heard(99, 2500.0, difference=1700.0, mismatch=True, barge_in=640.0),
        ]
    }
    two = CallResult(scenario="reconnect", number=2, session_id="s2", ok=True, heard_unmatched=2)
    two.detail = {"turns": [heard(0, None), heard(1, 3000.0, difference=2000.0, mismatch=True)]}
    summary = summarize([one, two])
    assert summary["heard_turns"] == 100
    assert summary["heard_ms"] == {"p50": 1050.0, "p99": 2500.0}
    assert summary["heard_difference_ms"] == {"p50": 250.0, "p99": 1700.0}
    assert summary["heard_mismatches"] == 2
    assert summary["heard_unmatched"] == 2
    assert summary["barge_in_ms"] == {"p50": 640.0, "p99": 640.0}


def test_without_reports_the_heard_figures_are_empty() -> None:
    result = CallResult(scenario="basic", number=1, session_id="s1", ok=True)
    result.detail = {"turns": [_turn(0), _turn(1, e2e=700.0)]}
    summary = summarize([result])
    assert summary["heard_ms"] == {"p50": None, "p99": None}
    assert summary["heard_turns"] == summary["heard_mismatches"] == summary["heard_unmatched"] == 0
