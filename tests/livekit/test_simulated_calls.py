"""`simulate_calls` against the platform in LiveKit mode: every scenario over real rooms.

One run of the simulator (a subprocess, as an operator would run it) drives six scenarios,
two calls at a time, through the real LiveKit server; the tests then check what each
scenario must prove, in the summary and in what the platform stored.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.livekit.conftest import LiveKitPlatform

pytestmark = pytest.mark.livekit

SCENARIOS = ("basic", "barge-in", "client-interrupt", "tool", "reconnect", "agent-restart", "jitter")
SUMMARY_FIELDS = {
    "calls", "completed", "failed", "turns", "interrupted_turns", "reconnects", "tool_calls", "tool_replays",
    "budget_breaches", "stage_ms", "failovers", "provider_errors", "failover_ms", "session_ids", "errors",
    "transports", "impaired_frames",
}  # fmt: skip


@pytest.fixture(scope="module")
def run(lk: LiveKitPlatform) -> dict[str, Any]:
    summary, output = lk.simulate(
        "--scenario", ",".join(SCENARIOS), "--calls", str(len(SCENARIOS)), "--concurrency", "2", timeout=600
    )
    sessions = dict(zip(SCENARIOS, summary["session_ids"], strict=False))
    return {"summary": summary, "output": output, "sessions": sessions}


def _types(lk: LiveKitPlatform, session_id: str) -> list[str]:
    return [kind for _, kind, _ in lk.events(session_id)]


def test_every_scenario_completes_over_real_rooms_with_the_local_modes_summary(run) -> None:
    summary = run["summary"]
    assert summary["failed"] == 0, summary["errors"] or run["output"][-4000:]
    assert summary["completed"] == len(SCENARIOS)
    assert SUMMARY_FIELDS <= set(summary), SUMMARY_FIELDS - set(summary)
    assert summary["transports"] == {"LiveKitTransport": len(SCENARIOS)}
    assert summary["interrupted_turns"] >= 3  # barge-in, client-interrupt, jitter
    assert summary["tool_calls"] >= 2 and summary["tool_replays"] >= 1


def test_the_servers_webhooks_drive_each_session_from_created_to_ended(run, lk: LiveKitPlatform) -> None:
    for scenario, session_id in run["sessions"].items():
        events = lk.events(session_id)
        kinds = [kind for _, kind, _ in events]
        assert "caller.joined" in kinds and "agent.joined" in kinds, (scenario, kinds)
        joined = [p for _, kind, p in events if kind == "caller.joined" and p.get("source") == "webhook"]
        assert joined, f"{scenario}: no caller.joined from a webhook: {kinds}"
        states = [p["to"] for _, kind, p in events if kind == "session.state_changed"]
        assert states[0] == "active" and states[-1] == "ended", (scenario, states)


def test_a_crashed_agent_job_is_dispatched_again_and_resumes_without_greeting(run, lk: LiveKitPlatform) -> None:
    events = lk.events(run["sessions"]["agent-restart"])
    joined = [p["identity"] for _, kind, p in events if kind == "agent.joined" and p.get("identity")]
    lost = [p for _, kind, p in events if kind == "agent.lost"]
    assert len(lost) == 1 and len(set(joined)) == 2, [(k, p) for _, k, p in events if k.startswith("agent.")]
    dispatches = [p for _, kind, p in events if kind == "agent.dispatch_requested"]
    trail = [(seq, kind, p) for seq, kind, p in events if kind.startswith(("agent.", "caller."))]
    assert len(dispatches) == 2 and "agent lost" in dispatches[1]["reason"], trail
    started = [p for _, kind, p in events if kind == "agent.job_started"]
    assert started[-1]["resumed"] is True and started[-1]["restored_turns"] >= 2


def test_a_network_drop_reconnects_the_caller_to_the_same_agent_job(run, lk: LiveKitPlatform) -> None:
    events = lk.events(run["sessions"]["reconnect"])
    joined = [p for _, kind, p in events if kind == "caller.joined"]
    agents = {p["identity"] for _, kind, p in events if kind == "agent.joined"}
    # The SDK's full reconnect is a new participant (a new SID) with the same identity.
    assert len({p["connection"] for p in joined}) >= 2
    assert len(agents) == 1, "the agent job survives the caller's drop"
    assert "session.reconnect" in [kind for _, kind, _ in events]


def test_the_jitter_scenarios_impairment_is_applied_to_the_callers_frames(run) -> None:
    impaired = run["summary"]["impaired_frames"]
    # 3 % of the caller's ~10 s of speech in 20 ms frames (seeded); no other call is impaired.
    assert impaired["frames"] > 300 and 0 < impaired["lost"] < impaired["frames"] * 0.1, impaired


def test_the_workers_exporter_adds_up_its_job_processes(run, lk: LiveKitPlatform) -> None:
    """One exporter per worker (AGENT_METRICS_PORT), summing the job processes' samples."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{lk.agent_metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    served = sum(float(v) for v in re.findall(r'^voice_sessions_served_total\{agent="[^"]+"\} (\S+)$', text, re.M))
    turns = sum(float(v) for v in re.findall(r"^voice_turns_total\{[^}]*\} (\S+)$", text, re.M))
    assert served >= len(SCENARIOS), text[:2000]
    assert turns >= run["summary"]["turns"] - 2, (turns, run["summary"]["turns"])
