"""The JSON summary of a simulator run (the last line of stdout with `--json`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from voiceplatform.stats import nearest_rank_percentile as percentile

SUMMARY_STAGES = ("eou", "stt", "llm_ttft", "tool", "tts_ttfb", "e2e")


def summarize(results: list[Any]) -> dict[str, Any]:
    """Counts and per-stage p50/p95 over every stored turn of every call; the caller-heard
    gap (p50/p99) over the turns whose heard gap the caller reported.

    `tool_calls` counts the agent's tool calls plus the simulator's forced retries;
    `tool_replays` those the ledger answered as replays (the tool did not run again).
    """
    stage_values: dict[str, list[float]] = {stage: [] for stage in SUMMARY_STAGES}
    heard: dict[str, list[float]] = {"gap": [], "difference": [], "barge_in": []}
    mismatches = unmatched = 0
    turns = interrupted = reconnects = tool_calls = tool_replays = breaches = 0
    errors: list[str] = []
    failovers: list[dict[str, Any]] = []
    provider_errors: list[dict[str, Any]] = []
    impaired = {"frames": 0, "lost": 0}
    for result in results:
        detail = result.detail or {}
        for impairment in detail.get("impairment") or []:
            impaired["frames"] += int(impairment.get("frames") or 0)
            impaired["lost"] += int(impairment.get("lost") or 0)
        failovers.extend(detail.get("failovers") or [])
        provider_errors.extend(detail.get("provider_errors") or [])
        reconnects += int(detail.get("reconnect_count") or 0)
        for turn in detail.get("turns") or []:
            turns += 1
            interrupted += bool(turn.get("interrupted"))
            breaches += len(turn.get("breaches") or [])
            for call in turn.get("tool_calls") or []:
                tool_calls += 1
                tool_replays += bool(call.get("replayed"))
            for stage, value in (turn.get("stages_ms") or {}).items():
                if stage in stage_values and value is not None:
                    stage_values[stage].append(float(value))
            for key in heard:
                if (value := turn.get(f"heard_{key}_ms")) is not None:
                    heard[key].append(float(value))
            mismatches += bool(turn.get("heard_mismatch"))
        unmatched += int(getattr(result, "heard_unmatched", 0) or 0)
        for retry in result.tool_retries:
            tool_calls += 1
            tool_replays += bool(retry.get("replayed"))
        if not result.ok:
            errors.append(
                f"call {result.number} ({result.scenario}, {result.session_id or 'no session'}): {result.error}"
            )
    return {
        "calls": len(results),
        "completed": sum(1 for r in results if r.ok),
        "failed": sum(1 for r in results if not r.ok),
        "turns": turns,
        "interrupted_turns": interrupted,
        "reconnects": reconnects,
        "tool_calls": tool_calls,
        "tool_replays": tool_replays,
        "budget_breaches": breaches,
        "stage_ms": {
            stage: {"p50": percentile(values, 50), "p95": percentile(values, 95)}
            for stage, values in stage_values.items()
        },
        # Issue 19 (docs/latency.md): the caller-heard gap of the turns it reported, its
        # difference from the platform's e2e, the turns beyond the tolerance, and barge-ins.
        "heard_ms": _p50_p99(heard["gap"]),
        "heard_difference_ms": _p50_p99(heard["difference"]),
        "heard_turns": len(heard["gap"]),
        "heard_mismatches": mismatches,
        "heard_unmatched": unmatched,
        "barge_in_ms": _p50_p99(heard["barge_in"]),
        # Issue 11: provider failovers (with the time each cost) and provider errors.
        "failovers": len(failovers),
        "provider_errors": len(provider_errors),
        "failover_ms": _failover_ms(failovers),
        # Network impairment (jitter scenario): caller frames it touched and frames it lost.
        "impaired_frames": impaired,
        "session_ids": [r.session_id for r in results if r.session_id],
        # Calls per transport: {"LiveKitTransport": 3} (LiveKit rooms) or {"HostTransport": 3}.
        "transports": dict(Counter(r.transport for r in results if getattr(r, "transport", ""))),
        "errors": errors,
    }


def _p50_p99(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99)}


def _failover_ms(failovers: list[dict[str, Any]]) -> dict[str, Any]:
    """Time lost per failover (ms): from the request's start to the switch."""
    values = [float(f["time_lost_ms"]) for f in failovers if f.get("time_lost_ms") is not None]
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": round(max(values), 1) if values else None,
    }
