"""Recording voice turns: the one place turn rows, turn metrics and turn events are written.

The agent calls `turn_record` from its batching writer task (never from the event loop's
hot path). Metrics are observed only after the transaction commits, so a rolled-back
turn never shows up in Prometheus either.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F

from agents_app.models import STAGE_KEYS
from sessions_app import broadcast
from sessions_app.live import messages as live
from sessions_app.models import Turn, VoiceSession

logger = logging.getLogger(__name__)

INTERRUPT_SOURCES = ("vad", "client")
_TEXT_LIMIT = 20_000


def turn_breaches(*, stages_ms: dict[str, float | None], budgets_ms: dict[str, int]) -> list[str]:
    """Stages whose measured time is over the agent's budget, in stage order."""
    return [
        stage
        for stage in STAGE_KEYS
        if stages_ms.get(stage) is not None and stage in budgets_ms and float(stages_ms[stage]) > budgets_ms[stage]
    ]


def _stage_value(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 3) if number >= 0 else None


def _started_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OSError):
        return None


@transaction.atomic
def turn_record(*, session_id: UUID | str, data: dict[str, Any]) -> Turn:
    """Store one turn, check the budget, count it, and announce it.

    `data` keys: index (required), user_text, generated_text, heard_text, interrupted,
    interrupt_source ("vad"|"client"), `<stage>_ms` for eou stt llm_ttft tool tts_ttfb
    ttfa e2e, tool_calls (list of tool records), error, started_at (epoch seconds or
    datetime). Recording the same index twice returns the stored turn unchanged (the
    writer may retry after a failure it could not tell from a commit).
    """
    from sessions_app.services import session_event_append

    index = int(data["index"])
    session = VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)
    existing = Turn.objects.filter(session=session, index=index).first()
    if existing is not None:
        return existing

    interrupted = bool(data.get("interrupted"))
    source = str(data.get("interrupt_source") or "")
    if interrupted and source not in INTERRUPT_SOURCES:
        source = "vad"
    if not interrupted:
        source = ""
    stages = {stage: _stage_value(data.get(f"{stage}_ms")) for stage in STAGE_KEYS}
    breaches = turn_breaches(stages_ms=stages, budgets_ms=session.agent.budgets_ms())
    turn = Turn.objects.create(
        session=session,
        index=index,
        user_text=str(data.get("user_text") or "")[:_TEXT_LIMIT],
        generated_text=str(data.get("generated_text") or "")[:_TEXT_LIMIT],
        heard_text=str(data.get("heard_text") or "")[:_TEXT_LIMIT],
        interrupted=interrupted,
        interrupt_source=source,
        breaches=breaches,
        tool_calls=list(data.get("tool_calls") or []),
        error=str(data.get("error") or "")[:2000],
        started_at=_started_at(data.get("started_at")),
        **{f"{stage}_ms": value for stage, value in stages.items()},
    )

    fields: dict[str, Any] = {"turn_count": F("turn_count") + 1}
    if interrupted:
        fields["interrupt_count"] = F("interrupt_count") + 1
    if stages["e2e"] is not None:
        fields["last_e2e_ms"] = stages["e2e"]
    VoiceSession.objects.filter(pk=session.pk).update(**fields)

    event = session_event_append(
        session_id=session.pk,
        type="turn.completed",
        payload={
            "index": index,
            "interrupted": interrupted,
            "interrupt_source": source,
            "e2e_ms": stages["e2e"],
            "breaches": breaches,
        },
        announce=False,
    )
    session.refresh_from_db(fields=["turn_count", "interrupt_count", "last_e2e_ms", "last_seq"])
    # One batch per turn (event, turn, row): one publish per group instead of three.
    messages = [
        live.event_added(event),
        live.turn_completed(turn, seq=event.seq),
        live.session_updated(live.session_row(session)),
    ]
    groups = broadcast.session_groups(session.pk)
    transaction.on_commit(lambda: broadcast.publish_many(groups, messages))

    agent_label = session.agent.slug
    transaction.on_commit(
        lambda: _observe(agent=agent_label, stages=stages, breaches=breaches, interrupted=interrupted, source=source)
    )
    return turn


def _observe(
    *, agent: str, stages: dict[str, float | None], breaches: list[str], interrupted: bool, source: str
) -> None:
    """Feed the turn metrics (only ever called after the turn's commit)."""
    try:
        from sessions_app import metrics

        for stage, value in stages.items():
            if value is not None:
                metrics.TURN_STAGE_SECONDS.labels(stage=stage, agent=agent).observe(value / 1000.0)
        metrics.TURNS.labels(agent=agent, interrupted=str(interrupted).lower()).inc()
        if interrupted:
            metrics.INTERRUPTS.labels(agent=agent, source=source).inc()
        for stage in breaches:
            metrics.BUDGET_BREACHES.labels(stage=stage, agent=agent).inc()
    except Exception:  # metrics never break recording
        logger.warning("could not observe turn metrics", exc_info=True)
