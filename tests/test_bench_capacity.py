"""bench/capacity.py's pure helpers: levels, per-level figures, the capacity rule. No timing
is measured or asserted here; the benchmark itself is run by hand (`make bench`)."""

from __future__ import annotations

import pytest

from tests.bench_modules import load_bench

capacity = load_bench("capacity")
platform_runs = load_bench("platform_runs")


def _level(calls: int, *, p99: float, ratio: float, failed: int = 0) -> dict:
    return {"calls": calls, "e2e_p99_ms": p99, "p99_ratio": ratio, "within_budget": p99 <= 1000, "failed": failed}


def test_levels_are_sorted_unique_and_start_at_the_one_call_peer():
    assert capacity.parse_levels("4,2,2,6") == [1, 2, 4, 6]
    assert capacity.parse_levels("1, 3") == [1, 3]
    with pytest.raises(ValueError):
        capacity.parse_levels("0,2")
    with pytest.raises(ValueError):
        capacity.parse_levels("")


def test_capacity_is_the_highest_level_with_every_lower_level_within_budget():
    levels = [_level(1, p99=700, ratio=1.0), _level(2, p99=800, ratio=1.14), _level(3, p99=1200, ratio=1.7)]
    # A noisy pass above the first failure does not count.
    levels.append(_level(4, p99=900, ratio=1.29))
    assert capacity.max_calls_within(levels, capacity.within_budget) == 2
    assert capacity.max_calls_within(levels, capacity.within_ratio(1.5)) == 2
    assert capacity.max_calls_within(levels, capacity.within_ratio(2.0)) == 4


def test_no_capacity_when_one_call_is_already_over_budget_or_calls_failed():
    over = [_level(1, p99=1500, ratio=1.0), _level(2, p99=1600, ratio=1.07)]
    assert capacity.max_calls_within(over, capacity.within_budget) == 0
    assert capacity.max_calls_within(over, capacity.within_ratio(1.5)) == 2
    failed = [_level(1, p99=700, ratio=1.0), _level(2, p99=700, ratio=1.0, failed=1)]
    assert capacity.max_calls_within(failed, capacity.within_budget) == 1
    assert capacity.max_calls_within([], capacity.within_budget) == 0


def test_a_level_summary_divides_memory_and_cpu_by_the_calls():
    level = capacity.level_summary(
        calls=4,
        e2e_ms=[1000, 1200, 900, 3000],
        budget_ms=1000,
        base_p99=1500,
        rss_idle_mb=500,
        rss_peak_mb=620,
        cpu_s=48,
        wall_s=60,
    )
    assert level["e2e_p50_ms"] == 1000
    assert level["e2e_p99_ms"] == 3000
    assert level["p99_ratio"] == 2.0
    assert level["within_budget"] is False
    assert level["rss_per_call_mb"] == 30
    assert level["call_minutes"] == 4
    assert level["cpu_s_per_call_minute"] == 12
    empty = capacity.level_summary(
        calls=1, e2e_ms=[], budget_ms=1000, base_p99=None, rss_idle_mb=500, rss_peak_mb=490, cpu_s=0, wall_s=0
    )
    assert empty["e2e_p99_ms"] is None and empty["within_budget"] is False and empty["p99_ratio"] is None
    assert empty["rss_per_call_mb"] == 0 and empty["cpu_s_per_call_minute"] is None


def test_it_stops_climbing_on_failed_calls_or_a_runaway_p99():
    assert capacity.should_stop(_level(3, p99=5000, ratio=3.5), 3.0)
    assert capacity.should_stop(_level(3, p99=900, ratio=1.0, failed=1), 3.0)
    assert not capacity.should_stop(_level(3, p99=1400, ratio=2.0), 3.0)


def test_cpu_time_counts_own_and_reaped_children_ticks():
    # /proc/PID/stat after the command name: state ppid pgrp session tty tpgid flags minflt cminflt
    # majflt cmajflt utime stime cutime cstime ...
    fields = "S 1 7 7 0 -1 0 0 0 0 0 150 50 30 20 20 0".split()
    ticks = platform_runs.CLOCK_TICKS
    assert platform_runs.cpu_seconds_from_stat(fields) == pytest.approx(250 / ticks)


def test_this_process_group_is_found_with_its_memory_and_cpu():
    import os

    pgid = os.getpgrp()
    groups = platform_runs.process_groups()
    assert os.getpid() in groups[pgid]
    assert platform_runs.group_rss_mb(pgid, groups) > 0
    assert platform_runs.group_cpu_seconds(pgid, groups) >= 0
