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

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents_app.models import STAGE_KEYS
from sessions_app import broadcast
from sessions_app.live import messages as live
from sessions_app.models import Turn, VoiceSession
from voiceplatform.errors import Conflict, InvalidInput, NotFound

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


# --- what the caller heard (issue 19, docs/latency.md) --------------------------------------


def _heard_value(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


@transaction.atomic
def turn_heard_record(
    *, session_id: UUID | str, index: int, heard_gap_ms: float, barge_in_ms: float | None = None
) -> Turn:
    """Store the caller's measurement of one of its turns, once.

    Idempotent per turn: the same values again return the stored turn (nothing counted or
    announced twice); different values raise `Conflict` (`heard_conflict`): a measurement
    is a fact about a moment, not something to revise. Only turns that answer a caller
    utterance (non-empty `user_text`) have a heard gap (`InvalidInput` for the greeting).
    The difference from the platform's figure is flagged beyond HEARD_GAP_TOLERANCE_MS.
    """
    from sessions_app.services import session_event_append

    gap, barge_in = _heard_value(heard_gap_ms), _heard_value(barge_in_ms)
    # The session row first, as turn_record locks it: one lock order, reports serialized.
    session = VoiceSession.objects.select_for_update().select_related("agent").filter(pk=session_id).first()
    turn = Turn.objects.filter(session=session, index=index).first() if session is not None else None
    if turn is None:
        raise NotFound("turn_not_found", "This session has no turn with that index.", {"index": index})
    if not turn.user_text:
        raise InvalidInput(
            "not_a_caller_turn", "This turn answers no caller utterance (the greeting).", {"index": index}
        )
    if turn.heard_gap_ms is not None:
        if (turn.heard_gap_ms, turn.heard_barge_in_ms) == (gap, barge_in):
            return turn
        raise Conflict(
            "heard_conflict",
            "This turn's heard gap was already reported with other values.",
            {"index": index, "heard_gap_ms": turn.heard_gap_ms, "barge_in_ms": turn.heard_barge_in_ms},
        )
    platform = turn.platform_gap_ms()
    difference = None if platform is None else round(gap - platform, 3)
    tolerance = float(settings.HEARD_GAP_TOLERANCE_MS)
    turn.heard_gap_ms, turn.heard_barge_in_ms = gap, barge_in
    turn.heard_difference_ms = difference
    turn.heard_mismatch = difference is not None and abs(difference) > tolerance
    turn.heard_reported_at = timezone.now()
    turn.save(
        update_fields=[
            "heard_gap_ms", "heard_barge_in_ms", "heard_difference_ms", "heard_mismatch", "heard_reported_at"
        ]
    )  # fmt: skip
    event = session_event_append(
        session_id=turn.session_id,
        type="turn.heard",
        payload={
            "index": index,
            "heard_gap_ms": gap,
            "barge_in_ms": barge_in,
            "difference_ms": difference,
            "mismatch": turn.heard_mismatch,
        },
        announce=False,
    )
    messages = [live.event_added(event), live.turn_heard(turn, seq=event.seq)]
    groups = broadcast.session_groups(turn.session_id)
    transaction.on_commit(lambda: broadcast.publish_many(groups, messages))
    agent, mismatch = session.agent.slug, turn.heard_mismatch
    transaction.on_commit(lambda: _observe_heard(agent=agent, gap_ms=gap, mismatch=mismatch))
    return turn


def _observe_heard(*, agent: str, gap_ms: float, mismatch: bool) -> None:
    try:
        from sessions_app import metrics

        metrics.HEARD_GAP_SECONDS.labels(agent=agent).observe(gap_ms / 1000.0)
        if mismatch:
            metrics.HEARD_GAP_MISMATCHES.labels(agent=agent).inc()
    except Exception:  # metrics never break recording
        logger.warning("could not observe heard-gap metrics", exc_info=True)
