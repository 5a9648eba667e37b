"""Soak: N concurrent simulated calls for M minutes while the platform's own parts fail.

The platform runs as `make demo` runs it (web, Celery worker + beat, local agent host) on a
PostgreSQL cluster and a Redis of its own (tests/faults/platform.py), so the faults hit
nothing else. Callers run in rounds: each round is one `simulate_calls --calls N
--concurrency N` process with the soak scenario (greeting, four questions, one order
placed through the `place_order` tool), until the time is up. Faults are injected on a
schedule, each while calls are live:

- at 25 % of the run: PostgreSQL restarted (stopped for --outage seconds, then started);
- at 50 %: Redis killed (SIGKILL) and started again after --outage seconds;
- at 75 %: PostgreSQL restarted again.

Prints one JSON object:
- `calls`, `completed`, `failed`; `turns_expected` (what the callers' scenario makes),
  `turns_stored`, `lost` (sessions whose turns or events have a gap, a missing turn, or a
  record stored twice; must be 0), `duplicated_effects` (orders beyond one per successful
  ledger row, must be 0) and `lost_effects` (ledger rows marked ok without their order);
- `reports_expected` (finished sessions) and `reports_produced` (after a final wait for
  the backfill, which runs every 5 s here);
- `latency_ms`: p50/p99 of the turns' e2e before the first fault, during faults (from a
  fault's start to 10 s after it ended) and after;
- `rss_mb` per process role (web, celery, agent, llm): first, last and the slope in MiB per
  minute of every sample after the warm-up; the RSS between rounds (sampled 3 s after each
  round, no call live) and its slope, `idle_slope_mb_per_min`: under load the RSS is a
  sawtooth, and the floor between rounds is what a leak raises; `pg_connections` and
  `redis_clients`: first (after the warm-up), last, max (must stay flat), and per process
  role between rounds (`redis_clients_between_rounds`; with SOAK_REDIS_COMMANDS=1 also
  counted by each client's last command, to tell one client library from another);
- `flat`: every idle slope under --max-slope MiB/min and each connection count at the end
  within 20 % (+2) of its first value after the warm-up (the first 20 % of the run).

Defaults are sized for 2 cores: 6 calls, 10 minutes, 5 s outages. Self-stopping: a round
is never started after the deadline, and the whole run is bounded by --minutes + 5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
os.environ.setdefault("VOICE_DEV_DEFAULTS", "true")

from bench.common import percentile  # noqa: E402 (after the sys.path insert)
from bench.platform_runs import ROLES, group_rss_mb, logger, process_groups, roles, run_round  # noqa: E402
from tests.faults.platform import FAULT_CALL, FAULT_CALL_TURNS, FaultPlatform, check_nothing_lost_or_doubled  # noqa: E402


def soak_scenario() -> str:
    """The fault tests' call plus an order placed through the `place_order` tool before the
    caller's last words: one more turn, and a side effect to count."""
    import yaml

    scenario = yaml.safe_load(FAULT_CALL)
    steps = scenario["steps"]
    last_say = max(i for i, step in enumerate(steps) if "say" in step)
    steps[last_say:last_say] = [
        {"say": "I would like to place an order from the menu for two coffees please."},
        {"wait_for_agent": {}},
    ]
    for step in steps:
        if "wait_turns" in step:
            step["wait_turns"]["count"] = SOAK_TURNS
    scenario.update(name="soak-call", expect={"min_turns": SOAK_TURNS})
    return yaml.safe_dump(scenario, sort_keys=False)


SOAK_TURNS = FAULT_CALL_TURNS + 1
AFTER_FAULT_S = 10.0
IDLE_SETTLE_S = 3.0


log = logger("soak")


# -- processes and their memory ----------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every few seconds: RSS per role (its whole process group), PostgreSQL and Redis connections."""

    def __init__(self, platform: FaultPlatform, every: float) -> None:
        super().__init__(daemon=True)
        self.platform = platform
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(self.take())

    def take(self) -> dict[str, Any]:
        groups = process_groups()
        leaders = roles(self.platform.log_path)
        sample: dict[str, Any] = {"t": time.monotonic()}
        for role, leader in leaders.items():
            sample[role] = group_rss_mb(leader, groups)
        sample["pg"] = self._pg_connections()
        sample["redis"], sample["redis_by_role"] = self._redis_clients(leaders, groups)
        return sample

    def _redis_clients(
        self, leaders: dict[str, int], groups: dict[int, list[int]]
    ) -> tuple[int | None, dict[str, int]]:
        """Redis clients (None while Redis is down), and per process role: each client's
        address matched to the process that holds that socket ("other": the soak's own
        or a process that ended)."""
        import psutil
        import redis

        try:
            clients = redis.Redis.from_url(self.platform.redis.url, socket_timeout=1).client_list()
        except Exception:
            return None, {}
        role_of = {pid: role for role, leader in leaders.items() for pid in groups.get(leader, [leader])}
        owner = {
            f"{c.laddr.ip}:{c.laddr.port}": c.pid for c in psutil.net_connections(kind="inet") if c.laddr and c.pid
        }
        counts: dict[str, int] = {}
        for client in clients:
            role = role_of.get(owner.get(client.get("addr", ""), -1), "other")
            counts[role] = counts.get(role, 0) + 1
            if os.environ.get("SOAK_REDIS_COMMANDS"):  # which client each is: its last command
                key = f"{role}:{client.get('cmd', '?')}"
                counts[key] = counts.get(key, 0) + 1
        return len(clients), counts

    def _pg_connections(self) -> int | None:
        try:
            rows = self.platform.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname=%s", (self.platform.fault_db,)
            )
            return int(rows[0][0])
        except Exception:
            return None  # down right now


def _slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 60, 2)


def _memory_report(samples: list[dict[str, Any]], idle: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """Per role: first and last sample after the warm-up, the slope of all samples, and the
    RSS between rounds (no call live) with its slope.

    Under load the RSS is a sawtooth (a call's buffers, Piper's arena until the call ends):
    the slope of every sample depends on where in a round the window begins and ends. The
    RSS between rounds is the floor a leak raises, so `idle_slope_mb_per_min` decides."""
    if not samples:
        return {}
    start = samples[0]["t"]
    settled = [s for s in samples if s["t"] - start >= warmup] or samples
    floors = [s for s in idle if s["t"] - start >= warmup]
    report: dict[str, Any] = {}
    for role in ROLES:
        points = [(s["t"], s[role]) for s in settled if s.get(role)]
        if points:
            between = [(s["t"], s[role]) for s in floors if s.get(role)]
            report[role] = {
                "first": points[0][1],
                "last": points[-1][1],
                "slope_mb_per_min": _slope_per_minute(points),
                "idle_between_rounds": [round(v, 1) for _, v in between],
                "idle_slope_mb_per_min": _slope_per_minute(between),
            }
    return report


def _count_report(samples: list[dict[str, Any]], key: str, warmup: float) -> dict[str, Any]:
    """First (after the warm-up), last and max of a connection count."""
    if not samples:
        return {}
    start = samples[0]["t"]
    values = [s[key] for s in samples if s.get(key) is not None and s["t"] - start >= warmup]
    return {"first": values[0], "last": values[-1], "max": max(values)} if values else {}


# -- faults --------------------------------------------------------------------------------------------


def run_faults(platform: FaultPlatform, minutes: float, outage: float, windows: list[dict[str, Any]]) -> None:
    schedule = [(0.25, "postgres_restart"), (0.5, "redis_kill"), (0.75, "postgres_restart")]
    started = time.monotonic()
    for fraction, kind in schedule:
        time.sleep(max(0.0, started + fraction * minutes * 60 - time.monotonic()))
        window = {"kind": kind, "at_s": round(time.monotonic() - started, 1), "start": datetime.now(UTC)}
        log(f"fault: {kind} for {outage:.0f} s")
        if kind == "postgres_restart":
            platform.pg.stop()
            time.sleep(outage)
            platform.pg.start()
        else:
            platform.redis.stop()
            time.sleep(outage)
            platform.redis.start()
        window["end"] = datetime.now(UTC)
        windows.append(window)


# -- the run -------------------------------------------------------------------------------------------


def analyse(platform: FaultPlatform, session_ids: list[str], windows: list[dict[str, Any]]) -> dict[str, Any]:
    lost = []
    turns_stored = 0
    for session_id in session_ids:
        stored = platform.stored(session_id)
        turns_stored += len(stored["turns"])
        problems = check_nothing_lost_or_doubled(stored, min_turns=SOAK_TURNS)
        if problems:
            lost.append({"session_id": session_id, "problems": problems})
    turns = platform.query(
        "SELECT started_at, e2e_ms FROM sessions_app_turn WHERE session_id = ANY(%s::uuid[]) AND e2e_ms IS NOT NULL",
        (session_ids,),
    )
    first_fault = windows[0]["start"] if windows else None

    def phase(started: datetime | None) -> str:
        if started is None or first_fault is None or started < first_fault:
            return "before"
        if any(w["start"] <= started <= w["end"] + timedelta(seconds=AFTER_FAULT_S) for w in windows):
            return "during"
        return "after"

    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for started, e2e in turns:
        phases[phase(started)].append(float(e2e))
    latency = {
        name: {"turns": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}
        for name, values in phases.items()
    }
    effects = platform.query(
        """SELECT l.scope,
                  count(*) FILTER (WHERE l.status = 'succeeded'),
                  (SELECT count(*) FROM tools_app_demoorder o WHERE o.idempotency_key LIKE l.scope || ':%%')
           FROM tools_app_toolinvocation l
           WHERE l.tool_name = 'place_order' AND l.scope = ANY(%s)
           GROUP BY l.scope""",
        ([str(s) for s in session_ids],),
    )
    ok_calls = sum(int(ok) for _, ok, _ in effects)
    duplicated = sum(max(0, int(orders) - int(ok)) for _, ok, orders in effects)
    lost_effects = sum(max(0, int(ok) - int(orders)) for _, ok, orders in effects)
    return {
        "lost": len(lost),
        "lost_detail": lost[:5],
        "turns_stored": turns_stored,
        "tool_calls_ok": ok_calls,
        "duplicated_effects": duplicated,
        "lost_effects": lost_effects,
        "latency_ms": latency,
    }


def wait_reports(platform: FaultPlatform, session_ids: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    produced = 0
    while time.monotonic() < deadline:
        produced = int(
            platform.query(
                "SELECT count(*) FROM sessions_app_voicesession WHERE id = ANY(%s::uuid[]) AND report IS NOT NULL",
                (session_ids,),
            )[0][0]
        )
        if produced >= len(session_ids):
            break
        time.sleep(2)
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=6, help="concurrent calls per round (default 6)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds each fault lasts (default 5)")
    parser.add_argument("--max-slope", type=float, default=5.0, help="MiB/min above which memory is not flat")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    args = parser.parse_args()
    if args.calls < 1 or args.minutes <= 0 or args.outage <= 0:
        parser.error("--calls, --minutes and --outage must be positive")

    tmp = Path(tempfile.mkdtemp(prefix="vp-soak-"))
    log(f"starting the platform on a private PostgreSQL and Redis (logs in {tmp})")
    platform = FaultPlatform(
        tmp, extra_env={"REPORT_BACKFILL_EVERY_SECONDS": "5", "REPORT_BACKFILL_AFTER_SECONDS": "3"}
    )
    scenario = tmp / "soak-call.yaml"
    scenario.write_text(soak_scenario())
    windows: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []  # one sample after each round, no call live
    try:
        platform.start()
        sampler = Sampler(platform, args.sample_every)
        sampler.start()
        faults = threading.Thread(target=run_faults, args=(platform, args.minutes, args.outage, windows), daemon=True)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        faults.start()
        while time.monotonic() < deadline:
            summary = run_round(platform, args.calls, scenario, timeout=args.minutes * 60 + 300, log=log)
            rounds.append(summary)
            time.sleep(IDLE_SETTLE_S)  # the calls' end: Piper's arena shrunk, heap trimmed
            idle.append(sampler.take())
            log(
                f"round {len(rounds)}: {summary.get('completed')} of {summary.get('calls')} calls completed, "
                f"{time.monotonic() - started:.0f} s in"
            )
        faults.join(timeout=args.outage + 30)
        session_ids = [s for r in rounds for s in r.get("session_ids", [])]
        log("waiting for the post-call reports")
        reports = wait_reports(platform, session_ids, timeout=90)
        sampler.stop.set()
        sampler.join(timeout=10)
        result = analyse(platform, session_ids, windows)
        warmup = args.minutes * 60 * 0.2
        memory = _memory_report(sampler.samples, idle, warmup=warmup)
        pg = _count_report(sampler.samples, "pg", warmup)
        redis_clients = _count_report(sampler.samples, "redis", warmup)
        slopes = [m["idle_slope_mb_per_min"] for m in memory.values() if m["idle_slope_mb_per_min"] is not None]
        flat = all(s < args.max_slope for s in slopes) and all(
            c and c["last"] <= c["first"] * 1.2 + 2 for c in (pg, redis_clients)
        )
        print(
            json.dumps(
                {
                    "name": "soak",
                    "transport": "local",
                    "minutes": args.minutes,
                    "concurrency": args.calls,
                    "rounds": len(rounds),
                    "calls": sum(int(r.get("calls") or 0) for r in rounds),
                    "completed": sum(int(r.get("completed") or 0) for r in rounds),
                    "failed": sum(int(r.get("failed") or 0) for r in rounds),
                    "errors": [e for r in rounds for e in r.get("errors", [])][:5],
                    "turns_expected": SOAK_TURNS * len(session_ids),
                    **result,
                    "reports_expected": len(session_ids),
                    "reports_produced": reports,
                    "faults": [{"kind": w["kind"], "at_s": w["at_s"], "down_s": args.outage} for w in windows],
                    "rss_mb": memory,
                    "pg_connections": pg,
                    "redis_clients": redis_clients,
                    "redis_clients_between_rounds": [s.get("redis_by_role") for s in idle],
                    "flat": flat,
                }
            )
        )
    finally:
        platform.cleanup()


if __name__ == "__main__":
    main()
