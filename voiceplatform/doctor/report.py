"""Running the doctor's checks: all of them in the order a call needs them, one table row
per check, and the verdict (`manage.py doctor`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from voiceplatform.doctor.agents import (
    check_local_llm,
    check_offline_models,
    check_openai_endpoint,
    check_prompts,
    check_tool_secrets,
    providers_in_use,
)
from voiceplatform.doctor.base import FAIL, OK, WARN, Check
from voiceplatform.doctor.infrastructure import check_celery, check_database, check_production_settings, check_redis
from voiceplatform.doctor.transport import check_livekit


def run_checks(*, probe_timeout: float = 20.0) -> Iterator[Check]:
    """Every check, in the order a call needs them; yields as each finishes."""
    database = check_database()
    yield database
    redis_check = check_redis()
    yield redis_check
    yield check_celery(redis_check.status == OK)
    yield from check_livekit(probe_timeout=probe_timeout)
    if database.status != OK:
        yield Check("agents", FAIL, "not checked: the database is not usable", "fix the database first")
    else:
        yield from check_prompts()
        in_use = providers_in_use()
        for name, agents in sorted(in_use.endpoints.items()):
            yield check_openai_endpoint(name, agents)
        if in_use.local:
            yield check_local_llm(in_use.local)
        if in_use.offline:
            yield check_offline_models(in_use.offline)
        yield from check_tool_secrets()
    yield check_production_settings()


def summary(checks: list[Check]) -> str:
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL)}
    verdict = "broken: a call needs what failed" if counts[FAIL] else "ready for calls"
    return f"{verdict} ({counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed)"


def format_row(check: Check, *, width: int = 24) -> str:
    line = f"{check.name:<{width}} {check.status.upper():<6} {check.detail}"
    if check.fix and check.status != OK:
        line += f"\n{'':<{width}} {'':<6} → {check.fix}"
    return line


def collect(*, probe_timeout: float = 20.0, on_check: Callable[[Check], Any] | None = None) -> list[Check]:
    checks = []
    for check in run_checks(probe_timeout=probe_timeout):
        checks.append(check)
        if on_check is not None:
            on_check(check)
    return checks
