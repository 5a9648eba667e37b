"""The tool ledger's entry points: invoke a tool at most once per idempotency key, run a
queued (background) invocation, and observe each outcome (metric and session event).

The rules are in tools_app/ledger.py (and docs/tools.md); claiming a key is
tools_app/claims.py, running a claimed call tools_app/execution.py.

`tool_invoke` must not be called inside an outer transaction in production: the claim
has to commit before the tool runs so that concurrent callers see it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from tools_app.builtins import builtin_get
from tools_app.claims import claim, resolve_existing
from tools_app.execution import complete, execute, invoke_in_one_transaction, json_safe
from tools_app.ledger import (
    MAX_KEY_LENGTH,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    InvocationIndeterminate,
    InvocationOutcome,
    outcome_from_row,
    request_fingerprint,
)
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind

logger = logging.getLogger(__name__)


# --- observation ---------------------------------------------------------------------


def invocation_observe(*, outcome: InvocationOutcome, emit_event: bool = True, latency_ms: float | None = None) -> None:
    """After the ledger commit: the Prometheus counter and the session's `tool.called` event.

    Observation never fails the call: the outcome is already durable in the ledger.
    """
    from sessions_app.metrics import TOOL_CALLS

    try:
        TOOL_CALLS.labels(tool=outcome.tool_name, status=outcome.status, replayed=str(outcome.replayed).lower()).inc()
    except Exception:
        logger.exception("could not count a tool call")
    if not (emit_event and outcome.session_id):
        return
    try:
        from sessions_app.services import session_event_append

        session_event_append(
            session_id=outcome.session_id,
            type="tool.called",
            payload={
                "name": outcome.tool_name,
                "key": outcome.key,
                "status": outcome.status,
                "replayed": outcome.replayed,
                "latency_ms": round(latency_ms if latency_ms is not None else (outcome.latency_ms or 0.0), 2),
                "error": outcome.error[:500],
            },
        )
    except Exception:
        logger.exception("could not append the tool.called event")


# --- entry points --------------------------------------------------------------------


def tool_invoke(
    *,
    tool: ToolDefinition,
    arguments: dict[str, Any],
    key: str | None,
    scope: str,
    session_id: str | None = None,
    emit_event: bool = True,
    allow_background: bool = True,
) -> InvocationOutcome:
    """Invoke `tool` once per (scope, key). Raises LedgerError for 400/409/422 cases.

    A `run_in_background` tool is queued to Celery and returns a RUNNING outcome; a retry
    with the same key then answers 409 until it completes, and the stored outcome after.
    """
    key = (key or "").strip()
    if not key:
        raise IdempotencyKeyMissing("An Idempotency-Key is required for tool calls.")
    if len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyInvalid(f"The Idempotency-Key is longer than {MAX_KEY_LENGTH} characters.")
    arguments = json_safe(arguments if arguments is not None else {})
    fingerprint = request_fingerprint(tool_name=tool.name, arguments=arguments)
    queued = allow_background and tool.run_in_background
    builtin = builtin_get(tool.builtin_name) if tool.kind == ToolKind.BUILTIN else None
    claimed: tuple[ToolInvocation, str] | InvocationOutcome
    if builtin is not None and builtin.atomic and not queued:
        claimed = invoke_in_one_transaction(
            tool=tool,
            builtin=builtin,
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            arguments=arguments,
            session_id=session_id,
        )
    else:
        claimed = claim(
            tool=tool,
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            arguments=arguments,
            session_id=session_id,
            queued=queued,
        )
    if isinstance(claimed, InvocationOutcome):
        invocation_observe(outcome=claimed, emit_event=emit_event)
        return claimed
    row, token = claimed
    if row.attempts == 0:  # freshly queued
        from tools_app.tasks import tool_invocation_run

        invocation_id = row.pk
        transaction.on_commit(lambda: tool_invocation_run.delay(invocation_id))
        return outcome_from_row(row, replayed=False)
    outcome = execute(tool=tool, row=row, token=token)
    invocation_observe(outcome=outcome, emit_event=emit_event)
    return outcome


def invocation_run_queued(*, invocation_id: int) -> str:
    """Run a queued (background) invocation: the Celery task's body. Safe to deliver twice."""
    row = ToolInvocation.objects.filter(pk=invocation_id).select_related("tool").first()
    if row is None:
        return "missing"
    if row.status != InvocationStatus.RUNNING:
        return "done"  # a redelivery after completion: nothing to do
    if row.tool is None:
        complete(
            row=row,
            token=row.claim_token,
            status=InvocationStatus.FAILED,
            error="The tool was deleted.",
            latency_ms=0.0,
        )
        return InvocationStatus.FAILED
    try:
        claimed = resolve_existing(row=row, tool=row.tool, fingerprint=row.fingerprint, queued_pickup=True)
    except InvocationIndeterminate:
        return InvocationStatus.INDETERMINATE
    if isinstance(claimed, InvocationOutcome):
        return "done"
    row, token = claimed
    outcome = execute(tool=row.tool, row=row, token=token)
    invocation_observe(outcome=outcome)
    return outcome.status
