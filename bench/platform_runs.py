"""What the benchmarks that run the whole platform share (bench/soak.py, bench/capacity.py).

The platform runs as `make demo` runs it, on a private PostgreSQL and Redis
(tests/faults/platform.py `FaultPlatform`). These helpers find its processes by role from
the demo log's "started (pid N)" lines (each child leads its own process group), read a
group's memory and CPU time from /proc, and run one round of simulated calls.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
ROLES = ("web", "celery", "agent", "llm")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def logger(name: str) -> Callable[[str], None]:
    """A progress printer for stderr: `[name HH:MM:SS] message`."""

    def log(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


# -- processes ---------------------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()


def process_groups() -> dict[int, list[int]]:
    """Every live process by process group id."""
    groups: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                pgid = int(_stat_fields(entry.name)[2])
            except (OSError, IndexError, ValueError):
                continue
            groups.setdefault(pgid, []).append(int(entry.name))
    return groups


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds_from_stat(fields: list[str]) -> float:
    """utime + stime + cutime + cstime of one /proc/PID/stat (as `_stat_fields` splits it):
    the process's own CPU time and that of its children it has reaped, so a group's sum
    over its live members counts every process once, including pool workers that exited."""
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def group_cpu_seconds(leader: int, groups: dict[int, list[int]] | None = None) -> float:
    groups = process_groups() if groups is None else groups
    total = 0.0
    for pid in groups.get(leader, [leader]):
        try:
            total += cpu_seconds_from_stat(_stat_fields(pid))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


def group_rss_mb(leader: int, groups: dict[int, list[int]] | None = None) -> float:
    groups = process_groups() if groups is None else groups
    return round(sum(rss_mb(pid) for pid in groups.get(leader, [leader])), 1)


def roles(log_path: Path) -> dict[str, int]:
    """The demo's children by role, from its log (the latest start of each role wins)."""
    text = log_path.read_text(errors="replace")
    return {name: int(pid) for name, pid in re.findall(r"(\w+) +\| .*started \(pid (\d+)\)", text) if name in ROLES}


# -- simulated calls ---------------------------------------------------------------------------------


def run_round(
    platform: Any, calls: int, scenario: Path, timeout: float, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """One `simulate_calls --calls N --concurrency N --scenario FILE --json` process; its summary
    (a failed-round stand-in when it printed none)."""
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "simulate_calls", "--json", "--base-url", platform.base_url,
             "--calls", str(calls), "--concurrency", str(calls), "--scenario", str(scenario)],
            cwd=BASE_DIR, env=platform.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        if log:
            log(f"a round of {calls} calls did not finish within {timeout:.0f} s")
        return {"calls": calls, "completed": 0, "failed": calls, "session_ids": [], "errors": ["timeout"]}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        if log:
            log(f"a round printed no summary (status {done.returncode}): {done.stderr[-1500:]}")
        return {"calls": calls, "completed": 0, "failed": calls, "session_ids": [], "errors": ["no summary"]}
