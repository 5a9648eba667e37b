"""End to end: the platform started as `make demo` starts it, driven by `simulate_calls`.

One platform (gunicorn + uvicorn workers, Celery worker + beat, local agent host; own database and Redis)
serves every test of this module. Each scenario test runs `simulate_calls --calls 2
--scenario NAME --json` in a subprocess while a staff user's dashboard websocket
listens, then checks the JSON summary, the stored turns (through the API) and that the
dashboard received every stored turn. The last test stops the platform with SIGTERM and
checks that no process is left.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.platform import BASE_DIR, Platform, StaffListener, free_port, pid_alive, staff_http, started

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STAGES = ("eou", "stt", "llm_ttft", "tool", "tts_ttfb", "e2e")
SUMMARY_KEYS = {
    "calls", "completed", "failed", "turns", "interrupted_turns", "reconnects", "tool_calls",
    "tool_replays", "budget_breaches", "stage_ms", "session_ids", "errors",
    "heard_ms", "heard_difference_ms", "heard_turns", "heard_mismatches", "heard_unmatched", "barge_in_ms",
}  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with started(Platform(Path(tmp_path_factory.mktemp("e2e")))) as running:
        yield running


class DashboardListener(StaffListener):
    """A support-staff browser: logs in, opens /ws/dashboard/, keeps every message."""

    def __init__(self, platform: Platform) -> None:
        super().__init__()
        self.platform = platform
        self.messages: list[dict[str, Any]] = []

    async def __aenter__(self) -> DashboardListener:
        base = self.platform.base_url
        self._http = await staff_http(base)
        ws = await self._http.ws_connect(f"ws://127.0.0.1:{self.platform.port}/ws/dashboard/", headers={"Origin": base})
        first = await ws.receive_json(timeout=20)
        assert first["type"] == "snapshot", f"the dashboard websocket refused the staff user: {first}"
        self._task = asyncio.create_task(self._collect(ws))
        return self

    async def _collect(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                frame = message.json()
                # Messages that queued up together arrive as one {"type": "batch"} frame.
                self.messages.extend(frame["messages"] if frame.get("type") == "batch" else [frame])

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(2)  # the last turn's broadcast may trail the simulator's exit
        await self.close()

    def turn_indexes(self, session_id: str) -> set[int]:
        return {
            int(m["turn"]["index"])
            for m in self.messages
            if m.get("type") == "turn.completed" and m.get("session_id") == session_id
        }


async def run_scenario(
    platform: Platform, scenario: str, *, concurrency: int = 1
) -> tuple[dict[str, Any], list[dict[str, Any]], DashboardListener]:
    # Barge-in timing is the most load-sensitive, so it runs its calls one at a time;
    # the others run both calls at once to keep the tier within a few minutes.
    async with DashboardListener(platform) as dashboard:
        summary, output = await asyncio.to_thread(
            platform.simulate, "--calls", "2", "--scenario", scenario, "--concurrency", str(concurrency)
        )
    assert SUMMARY_KEYS <= set(summary), f"summary keys missing: {SUMMARY_KEYS - set(summary)}"
    assert set(summary["stage_ms"]) == set(STAGES)
    assert summary["calls"] == 2
    assert summary["completed"] == 2, (
        f"{summary['errors']}\n{output[-4000:]}\nplatform errors:\n{platform.server_errors()}"
    )
    assert summary["failed"] == 0 and summary["errors"] == []
    assert len(summary["session_ids"]) == 2
    details = []
    key = platform.simulator_key()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        for session_id in summary["session_ids"]:
            async with http.get(f"{platform.base_url}/api/v1/sessions/{session_id}") as response:
                assert response.status == 200
                details.append(await response.json())
    stored_turns = sum(len(d["turns"]) for d in details)
    assert summary["turns"] == stored_turns
    for detail in details:
        assert detail["state"] == "ended"
        stored = {t["index"] for t in detail["turns"]}
        assert stored, "no turn stored"
        assert dashboard.turn_indexes(str(detail["session_id"])) >= stored, "the dashboard missed turns"
    e2e = summary["stage_ms"]["e2e"]
    assert e2e["p50"] is not None and e2e["p95"] >= e2e["p50"]
    # Issue 19: the caller measured what it heard and reported it; the API returns it per turn.
    heard_turns = [t for d in details for t in d["turns"] if t["heard_gap_ms"] is not None]
    for detail in details:
        assert any(t["heard_gap_ms"] is not None for t in detail["turns"] if t["user_text"]), (
            f"session {detail['session_id']}: no caller turn has a heard gap\n{output[-4000:]}"
        )
        assert all(t["user_text"] for t in detail["turns"] if t["heard_gap_ms"] is not None)
    assert summary["heard_turns"] == len(heard_turns)
    assert summary["heard_mismatches"] == sum(1 for t in heard_turns if t["heard_mismatch"])
    assert summary["heard_ms"]["p50"] is not None and summary["heard_ms"]["p99"] >= summary["heard_ms"]["p50"]
    return summary, details, dashboard


async def test_barge_in_calls_store_only_what_the_caller_heard(platform: Platform) -> None:
    summary, details, _ = await run_scenario(platform, "barge-in")
    assert summary["interrupted_turns"] >= 2
    for detail in details:
        interrupted = [t for t in detail["turns"] if t["interrupted"]]
        assert interrupted, f"session {detail['session_id']} has no interrupted turn"
        for turn in interrupted:
            assert turn["interrupt_source"] == "vad"
            heard, generated = turn["heard_text"], turn["generated_text"]
            assert generated.startswith(heard) and len(heard) < len(generated), (heard, generated)
    # The barge-in line talked over the agent: the caller measured how long the agent went on.
    barged = [t for d in details for t in d["turns"] if t["heard_barge_in_ms"] is not None]
    assert barged and all(t["user_text"] for t in barged)
    assert summary["barge_in_ms"]["p50"] is not None


async def test_reconnect_calls_continue_the_same_session(platform: Platform) -> None:
    summary, details, _ = await run_scenario(platform, "reconnect", concurrency=2)
    assert summary["reconnects"] >= 2
    for detail in details:
        assert detail["reconnect_count"] >= 1
        turns = detail["turns"]
        assert [t["index"] for t in turns] == list(range(len(turns)))
        assert len([t for t in turns if not t["user_text"]]) == 1, "the agent greeted again after the reconnect"
        assert len([t for t in turns if t["user_text"]]) >= 2, "no caller turn after the reconnect"


async def test_tool_calls_retried_with_the_same_key_have_one_side_effect(platform: Platform) -> None:
    summary, details, _ = await run_scenario(platform, "tool", concurrency=2)
    # Two calls, each: the agent's own call, then an agent key's API request sent twice.
    assert summary["tool_calls"] >= 6
    assert summary["tool_replays"] >= 2
    keys = [c["key"] for d in details for t in d["turns"] for c in t["tool_calls"]]
    assert len(keys) >= 2
    # The API client's ledger is its own (per client and session): its key ran once too.
    for key in keys + [f"{k}:client-retry" for k in keys]:
        rows = platform.query(
            # The demo tools key their rows "<ledger scope>:<ledger key>".
            "SELECT (SELECT count(*) FROM tools_app_demoorder WHERE idempotency_key LIKE %s)"
            " + (SELECT count(*) FROM tools_app_democharge WHERE idempotency_key LIKE %s)",
            (f"%{key}", f"%{key}"),
        )
        assert rows[0][0] == 1, f"tool call {key} had {rows[0][0]} side effects"


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def _families(text: str) -> set[str]:
    return {_family(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}


def _sample_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))


async def test_the_demo_agent_converses_with_the_real_local_model(platform: Platform) -> None:
    """`make demo` starts `runllm` and the `demo` agent talks through the real small model."""
    assert "local LLM ready" in platform.log_path.read_text(errors="replace"), "the demo did not start runllm"
    summary, details, _ = await run_scenario(platform, "conversation")
    for detail in details:
        assert detail["agent"] == "demo"
        answered = [t for t in detail["turns"] if t["user_text"]]
        assert len(answered) >= 3, detail["turns"]
        for turn in answered:
            assert turn["generated_text"].strip() and turn["stages_ms"]["llm_ttft"] is not None, turn
        sid = str(detail["session_id"])
        rows = platform.query(
            "SELECT type, payload FROM sessions_app_sessionevent WHERE session_id = %s AND type = %s",
            (sid if platform.pg_db else sid.replace("-", ""), "agent.job_started"),
        )
        payload = rows[0][1] if isinstance(rows[0][1], dict) else json.loads(rows[0][1])
        assert "smollm2-135m-instruct" in payload["providers"]["llm"], payload


def test_every_alert_has_its_inputs_in_the_running_exporters(platform: Platform) -> None:
    """deploy/alerts.yml against what the running web server and agent worker export after
    the calls above: each metric an alert reads is exported by one of them, and the
    per-session denominators are counted in production code, not only in tests."""
    import yaml

    web = _scrape(f"{platform.base_url}/metrics")
    agent = _scrape(f"http://127.0.0.1:{platform.agent_metrics_port}/metrics")
    exported = _families(web) | _families(agent)
    rules = [r for g in yaml.safe_load((BASE_DIR / "deploy" / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        for name in re.findall(r"\bvoice_[a-z_]+\b", rule["expr"]):
            assert _family(name) in exported, f"{rule['alert']} reads {name}, which no running exporter has"
    # The denominators of the per-session alerts, and the turns the latency alerts read.
    assert _sample_sum(agent, "voice_sessions_served_total") >= 6  # 3 scenarios x 2 calls
    assert _sample_sum(agent, "voice_turns_total") > 0
    assert _sample_sum(agent, "voice_turn_stage_seconds_count") > 0
    assert _sample_sum(web, "voice_reconnects_total") > 0  # the reconnect scenario, through the API
    # The callers' heard-gap reports arrive through the API: the web process counts them.
    assert _sample_sum(web, "voice_heard_gap_seconds_count") > 0


def _doctor(platform: Platform, **env: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "manage.py", "doctor", "--json"],
        cwd=BASE_DIR,
        env={**platform.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout)


def test_the_doctor_reports_the_running_demo_as_healthy_and_a_lost_redis_as_broken(platform: Platform) -> None:
    # The demo runs the doctor itself once its agent host and Celery are up, and shows it.
    deadline = time.monotonic() + 120
    while "doctor: " not in platform.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(1)
    assert "doctor: ready for calls" in platform.log_path.read_text(), platform.log_tail()

    code, report = _doctor(platform)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert code == 0 and report["ok"] is True, report
    for name in ("database", "redis", "celery", "agent worker", "prompts", "local model server", "offline models"):
        assert statuses[name] == "ok", (name, report)
    assert statuses["production settings"] == "warn"  # the demo's development defaults

    # Redis gone (the doctor pointed at a port where nothing listens, as after `redis-cli shutdown`).
    code, report = _doctor(platform, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert code == 1 and report["ok"] is False
    assert statuses["redis"] == "fail" and statuses["celery"] == "fail"
    assert statuses["database"] == "ok" and statuses["agent worker"] == "ok"


def test_it_stops_every_process_on_sigterm(platform: Platform) -> None:
    children = platform.child_pids()
    assert len(children) >= 3  # web, celery, agent
    assert platform.stop() == 0, platform.log_tail()
    alive = [pid for pid in children if pid_alive(pid)]
    assert alive == [], f"processes left behind: {alive}"
    assert "all processes stopped" in platform.log_path.read_text()
