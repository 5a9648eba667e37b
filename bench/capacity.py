"""Capacity: how many concurrent calls one agent worker process carries before its turns get
slow, and how much memory and CPU each call costs it.

The platform runs as `make demo` runs it (web, Celery, the local agent host, the local LLM
server) on a private PostgreSQL and Redis (tests/faults/platform.py). Every call goes over
the local transport to the ONE agent worker process (`manage.py runagent`, the local agent
host, with Moonshine's decoding threads inside it). For each provider mode and
each concurrency level N, `--rounds` rounds of N simultaneous simulated calls run
(`simulate_calls --calls N --concurrency N`, the fault tests' seven-turn call), and then:

- `e2e_p50_ms` / `e2e_p99_ms`: the stored turns' e2e for that level's sessions (from the
  database, nearest rank), and `p99_ratio`: its p99 over the 1-call level's p99 of the same
  run (the peer: the same worker with one call);
- `within_budget`: p99 ≤ the agent's e2e budget (`Agent.budget_e2e_ms`, 1000 ms by default);
- `rss_per_call_mb`: (the agent process group's peak RSS during the level − its RSS just
  before) / N;
- `cpu_s_per_call_minute`: the agent process group's CPU seconds (user + system, /proc) over
  the level / (N × the round's minutes).

Per mode, `max_calls_within_budget` is the highest level at which this level and every
level below it kept p99 within the budget (0: not even one call), and
`max_calls_within_ratio` the same with p99 ≤ `--max-ratio` × the 1-call level's p99.

Provider modes:
- `offline`: the `demo-scripted` agent: Moonshine STT, the offline LLM stand-in, Piper TTS,
  all inside the agent worker.
- `standin`: a copy of it (`sim-capacity`, built as the outage scenarios build theirs) whose
  `--standin-stages` (default LLM, TTS and STT) are the `openai` provider pointed at a local
  OpenAI-compatible stand-in server (agents_app/runtime/simulator/outage_server.py, run in
  this process) that answers after a fixed `--latency` (150 ms) with a fixed reply, cached
  Piper speech and a fixed transcript, so what grows with the calls is the worker's own cost
  (VAD, the framework, the platform's hooks and writer, audio in and out). A stage left out
  stays offline inside the worker (`--standin-stages llm,tts` keeps Moonshine).

One warm-up call per mode runs first and is not counted. Bounded: a mode stops climbing
when a level's calls fail or its p99 passes `--stop-ratio` × the 1-call level's, and no
round starts after `--max-minutes`. Progress goes to stderr; stdout gets one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
os.environ.setdefault("VOICE_DEV_DEFAULTS", "true")

from bench.common import percentile  # noqa: E402 (after the sys.path insert)
from bench.platform_runs import group_cpu_seconds, group_rss_mb, logger, process_groups, roles, run_round  # noqa: E402

log = logger("capacity")
MODES = ("offline", "standin")
STANDIN_SCENARIO = "capacity"  # the stand-in agent is sim-capacity (outages._sim_agent names it)


# -- pure helpers (tests/test_bench_capacity.py) --------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """Levels from "1,2,4": [1, 2, 4]: positive, sorted, unique, and 1 always first (the peer level)."""
    levels = sorted({int(part) for part in text.split(",") if part.strip()})
    if not levels or levels[0] < 1:
        raise ValueError("levels must be positive integers")
    return levels if levels[0] == 1 else [1, *levels]


def per_call(total: float | None, calls: int) -> float | None:
    return None if total is None or calls < 1 else round(total / calls, 2)


def level_summary(
    *,
    calls: int,
    e2e_ms: list[float],
    budget_ms: float,
    base_p99: float | None,
    rss_idle_mb: float,
    rss_peak_mb: float,
    cpu_s: float,
    wall_s: float,
) -> dict[str, Any]:
    """One level's figures from what was measured."""
    p99 = percentile(e2e_ms, 99)
    call_minutes = calls * wall_s / 60
    return {
        "calls": calls,
        "turns": len(e2e_ms),
        "e2e_p50_ms": percentile(e2e_ms, 50),
        "e2e_p99_ms": p99,
        "p99_ratio": round(p99 / base_p99, 3) if p99 is not None and base_p99 else None,
        "within_budget": p99 is not None and p99 <= budget_ms,
        "rss_idle_mb": round(rss_idle_mb, 1),
        "rss_peak_mb": round(rss_peak_mb, 1),
        "rss_per_call_mb": per_call(max(0.0, rss_peak_mb - rss_idle_mb), calls),
        "cpu_s": round(cpu_s, 1),
        "call_minutes": round(call_minutes, 2),
        "cpu_s_per_call_minute": round(cpu_s / call_minutes, 2) if call_minutes > 0 else None,
        "wall_s": round(wall_s, 1),
    }


def max_calls_within(levels: list[dict[str, Any]], ok: Any) -> int:
    """The highest level that passes `ok(level)` with every lower level passing too (0 when
    the lowest fails): one noisy pass above a failure does not count as capacity."""
    best = 0
    for level in sorted(levels, key=lambda lv: lv["calls"]):
        if not ok(level):
            break
        best = level["calls"]
    return best


def within_ratio(max_ratio: float) -> Any:
    return lambda level: level.get("failed", 0) == 0 and (level.get("p99_ratio") or float("inf")) <= max_ratio


def within_budget(level: dict[str, Any]) -> bool:
    return level.get("failed", 0) == 0 and bool(level.get("within_budget"))


def should_stop(level: dict[str, Any], stop_ratio: float) -> bool:
    """Stop climbing: calls failed, or p99 went past stop_ratio × the 1-call level's."""
    return bool(level.get("failed")) or (level.get("p99_ratio") or 0) > stop_ratio


# -- measuring ---------------------------------------------------------------------------------------


class PeakRss(threading.Thread):
    """The agent process group's highest RSS while a level runs."""

    def __init__(self, log_path: Path, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.log_path = log_path
        self.every = every
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            leader = roles(self.log_path).get("agent")
            if leader:
                self.peak = max(self.peak, group_rss_mb(leader))
            if self.stop.wait(self.every):
                return


def agent_group(platform: Any) -> int:
    leader = roles(platform.log_path).get("agent")
    if leader is None:
        raise RuntimeError("no agent process in the demo log")
    return leader


def run_level(platform: Any, mode: str, calls: int, scenario: Path, rounds: int) -> dict[str, Any]:
    time.sleep(3)  # let the previous level's jobs end and their memory settle
    leader = agent_group(platform)
    groups = process_groups()
    idle = group_rss_mb(leader, groups)
    cpu0 = group_cpu_seconds(leader, groups)
    sampler = PeakRss(platform.log_path)
    sampler.start()
    started = time.monotonic()
    summaries = [run_round(platform, calls, scenario, timeout=300 + 30 * calls, log=log) for _ in range(rounds)]
    wall = time.monotonic() - started
    cpu1 = group_cpu_seconds(agent_group(platform))
    sampler.stop.set()
    sampler.join(timeout=5)
    if agent_group(platform) != leader:
        log(f"{mode} × {calls}: the agent worker was restarted during the level (its CPU and memory are partial)")
    session_ids = [s for r in summaries for s in r.get("session_ids", [])]
    e2e = [
        float(row[0])
        for row in platform.query(
            "SELECT e2e_ms FROM sessions_app_turn WHERE session_id = ANY(%s::uuid[]) AND e2e_ms IS NOT NULL",
            (session_ids,),
        )
    ]
    return {
        "e2e": e2e,
        "calls": calls * rounds,
        "completed": sum(int(r.get("completed") or 0) for r in summaries),
        "failed": sum(int(r.get("failed") or 0) for r in summaries),
        "errors": [e for r in summaries for e in r.get("errors", [])][:3],
        "rss_idle_mb": idle,
        "rss_peak_mb": max(sampler.peak, idle),
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall,
    }


def make_standin_agent(platform: Any, stages: list[str]) -> str:
    """The `sim-capacity` agent: demo-scripted with `stages` on the stand-in server
    (OPENAI_BASE_URL in the platform's environment), built the outage scenarios' way."""
    code = (
        "import django; django.setup()\n"
        "from agents_app.runtime.simulator.outages import _sim_agent\n"
        f"for stage in {tuple(stages)!r}:\n"
        f"    _sim_agent('demo-scripted', {STANDIN_SCENARIO!r}, {{'stage': stage, 'fallback': 'offline'}}, '')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=platform.env, check=True, timeout=120)
    return f"sim-{STANDIN_SCENARIO}"


def run_mode(
    platform: Any, mode: str, agent: str, levels: list[int], args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    from tests.faults.platform import FAULT_CALL, FAULT_CALL_TURNS

    scenario = platform.tmp / f"capacity-{mode}.yaml"
    scenario.write_text(
        FAULT_CALL.replace("name: fault-call", f"name: capacity-{mode}").replace(
            "agent: demo-scripted", f"agent: {agent}"
        )
    )
    budget = float(platform.query("SELECT budget_e2e_ms FROM agents_app_agent WHERE slug=%s", (agent,))[0][0])
    log(f"{mode}: warm-up call (agent {agent}, e2e budget {budget:.0f} ms)")
    warm = run_round(platform, 1, scenario, timeout=300, log=log)
    result: dict[str, Any] = {
        "agent": agent,
        "e2e_budget_ms": budget,
        "warmup_completed": warm.get("completed"),
        "levels": [],
    }
    base_p99: float | None = None
    for calls in levels:
        if time.monotonic() > deadline:
            log(f"{mode}: out of time before {calls} calls")
            result["stopped"] = f"--max-minutes reached before {calls} calls"
            break
        log(f"{mode}: {calls} concurrent call(s) × {args.rounds} round(s)")
        measured = run_level(platform, mode, calls, scenario, args.rounds)
        level = level_summary(
            calls=calls,
            e2e_ms=measured["e2e"],
            budget_ms=budget,
            base_p99=base_p99,
            rss_idle_mb=measured["rss_idle_mb"],
            rss_peak_mb=measured["rss_peak_mb"],
            cpu_s=measured["cpu_s"],
            wall_s=measured["wall_s"],
        )
        level.update(
            calls_run=measured["calls"],
            completed=measured["completed"],
            failed=measured["failed"],
            turns_expected=FAULT_CALL_TURNS * measured["completed"],
        )
        if measured["errors"]:
            level["errors"] = measured["errors"]
        if base_p99 is None:
            base_p99 = level["e2e_p99_ms"]
            level["p99_ratio"] = 1.0 if base_p99 else None
        result["levels"].append(level)
        log(
            f"{mode} × {calls}: {level['completed']}/{measured['calls']} calls, {level['turns']} turns, e2e p50 "
            f"{level['e2e_p50_ms']} p99 {level['e2e_p99_ms']} ms (× {level['p99_ratio']}), "
            f"{level['rss_per_call_mb']} MiB/call, {level['cpu_s_per_call_minute']} CPU s per call-minute"
        )
        if should_stop(level, args.stop_ratio):
            result["stopped"] = f"at {calls} calls (failed calls or p99 over {args.stop_ratio} × the 1-call level)"
            break
    result["max_calls_within_budget"] = max_calls_within(result["levels"], within_budget)
    result["max_calls_within_ratio"] = max_calls_within(result["levels"], within_ratio(args.max_ratio))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,2,3,4,6", help="concurrent calls per level (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per level (default 1)")
    parser.add_argument("--providers", default=",".join(MODES), help="modes to run (default %(default)s)")
    parser.add_argument("--latency", type=float, default=0.15, help="the stand-in server's first-byte latency, s")
    parser.add_argument("--standin-stages", default="llm,tts,stt", help="stages on the stand-in (default %(default)s)")
    parser.add_argument(
        "--max-ratio", type=float, default=1.5, help="p99 over the 1-call level's that counts as degraded"
    )
    parser.add_argument("--stop-ratio", type=float, default=3.0, help="stop climbing past this p99 ratio")
    parser.add_argument("--max-minutes", type=float, default=45.0, help="start no round after this (default 45)")
    args = parser.parse_args()
    try:
        levels = parse_levels(args.levels)
    except ValueError as exc:
        parser.error(str(exc))
    modes = [m.strip() for m in args.providers.split(",") if m.strip()]
    stages = [s.strip() for s in args.standin_stages.split(",") if s.strip()]
    if not modes or any(m not in MODES for m in modes) or args.rounds < 1:
        parser.error(f"--providers takes {', '.join(MODES)}; --rounds must be positive")
    if not stages or any(s not in ("llm", "tts", "stt") for s in stages):
        parser.error("--standin-stages takes llm, tts, stt")

    from agents_app.runtime.simulator.outage_server import ScriptedOutageServer
    from tests.faults.platform import FaultPlatform

    deadline = time.monotonic() + args.max_minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="vp-capacity-"))
    server = None
    extra_env: dict[str, str] = {}
    if "standin" in modes:
        server = ScriptedOutageServer(latency=args.latency).start_in_thread()
        extra_env["OPENAI_BASE_URL"] = server.base_url
        log(f"stand-in OpenAI-compatible server at {server.base_url}, {args.latency * 1000:.0f} ms to first byte")
    log(f"starting the platform on a private PostgreSQL and Redis (logs in {tmp})")
    platform = FaultPlatform(tmp, extra_env=extra_env)
    results: dict[str, Any] = {}
    try:
        platform.start()
        for mode in modes:
            agent = make_standin_agent(platform, stages) if mode == "standin" else "demo-scripted"
            results[mode] = run_mode(platform, mode, agent, levels, args, deadline)
        print(
            json.dumps(
                {
                    "name": "capacity",
                    "transport": "local",
                    "agent_workers": 1,
                    "cpu_count": os.cpu_count(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "scenario": "fault-call: greeting + 6 caller turns, two 2 s pauses",
                    "levels": levels,
                    "rounds": args.rounds,
                    "standin_latency_ms": round(args.latency * 1000) if server else None,
                    "standin_stages": stages if server else None,
                    "max_ratio": args.max_ratio,
                    "modes": results,
                }
            )
        )
    finally:
        platform.cleanup()
        if server is not None:
            server.stop_thread()


if __name__ == "__main__":
    main()
