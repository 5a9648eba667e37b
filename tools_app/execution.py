"""Running a claimed invocation: validate the arguments, call the built-in or the HTTP
endpoint, and complete the ledger row (only while the claim is still ours).

An atomic built-in runs in the same transaction as its ledger row: either after its
claim (`execute`), or claiming its key in that one transaction (`invoke_in_one_transaction`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from livekit.agents.llm import ToolError

from sessions_app.selectors import tool_call_identity
from tools_app import claims
from tools_app.builtins import Builtin, BuiltinContext, builtin_get
from tools_app.executors import ToolExecutionError, http_execute
from tools_app.ledger import DONE, IdempotencyKeyInUse, InvocationOutcome, outcome_from_row
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind
from tools_app.schema import arguments_errors

logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def complete(
    *,
    row: ToolInvocation,
    token: str,
    status: str,
    result: Any = None,
    error: str = "",
    latency_ms: float,
    extra_attempts: int = 0,
) -> InvocationOutcome:
    now = timezone.now()
    updated = ToolInvocation.objects.filter(pk=row.pk, status=InvocationStatus.RUNNING, claim_token=token).update(
        status=status,
        result=result,
        error=error[:4000],
        latency_ms=latency_ms,
        completed_at=now,
        lease_expires_at=None,
        attempts=F("attempts") + extra_attempts,
    )
    if not updated:
        # Our lease was taken over (we were slow, not dead). Only tools that are safe to
        # re-run can be taken over, so this is harmless; the ledger keeps the other outcome.
        logger.warning("tool invocation %s completed after its lease was taken over", row.pk)
    row.refresh_from_db()
    if not updated:
        return InvocationOutcome(
            invocation_id=row.pk,
            tool_name=row.tool_name,
            scope=row.scope,
            key=row.key,
            status=status,
            result=result,
            error=error,
            replayed=False,
            attempts=row.attempts,
            latency_ms=latency_ms,
            session_id=str(row.session_id) if row.session_id else None,
        )
    return outcome_from_row(row, replayed=False)


def _run_builtin_atomic(
    *, row: ToolInvocation, token: str, builtin: Builtin, ctx: BuiltinContext, started: float
) -> InvocationOutcome:
    """The built-in's writes and the ledger completion commit together, or not at all."""
    with transaction.atomic():
        owned = (
            ToolInvocation.objects.select_for_update()
            .filter(pk=row.pk, status=InvocationStatus.RUNNING, claim_token=token)
            .values_list("pk", flat=True)
            .first()
        )
        if owned is not None:
            status, result, error = _call_builtin(builtin, ctx, row.arguments)
            outcome = complete(
                row=row,
                token=token,
                status=status,
                result=result,
                error=error,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            if row.claim_token == token and row.status in DONE:
                return outcome
            # Defensive (the row lock above makes this unreachable): never commit an
            # effect whose ledger completion did not land.
            transaction.set_rollback(True)
    # Lost the row before running: nothing ran here. Report what the owner did.
    row.refresh_from_db()
    if row.status in DONE:
        return outcome_from_row(row, replayed=True)
    raise IdempotencyKeyInUse(f"A request with the Idempotency-Key {row.key!r} is still running.")


def _call_builtin(builtin: Builtin, ctx: BuiltinContext, arguments: dict[str, Any]) -> tuple[str, Any, str]:
    try:
        if builtin.atomic:
            with transaction.atomic():  # a savepoint: a failing tool leaves no partial effect
                result = json_safe(builtin.fn(ctx, arguments))
        else:
            # Its effect is outside the database (a transfer, keys pressed): no transaction is
            # held open across it, and what it records about the attempt stays recorded.
            result = json_safe(builtin.fn(ctx, arguments))
    except ToolError as exc:
        return InvocationStatus.FAILED, None, exc.message
    except Exception as exc:
        logger.exception("built-in tool %s raised", builtin.name)
        return InvocationStatus.FAILED, None, f"The tool {ctx.tool_name!r} failed unexpectedly ({type(exc).__name__})."
    return InvocationStatus.SUCCEEDED, result, ""


class _BuiltinFailed(Exception):
    """Raised out of the transaction so that a failing built-in leaves no partial effect."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def invoke_in_one_transaction(
    *,
    tool: ToolDefinition,
    builtin: Builtin,
    scope: str,
    key: str,
    fingerprint: str,
    arguments: dict[str, Any],
    session_id: str | None,
) -> tuple[ToolInvocation, str] | InvocationOutcome:
    """Run an atomic built-in and claim its key in ONE transaction (one commit, one extra INSERT).

    The claim INSERT is the transaction's last statement, so the effect and the ledger row
    commit together or not at all: a crash leaves neither, and the retry runs it once.
    Concurrent duplicates wait on the uncommitted key (or on the effect's own unique key
    or row lock), then conflict: their transaction, with any work they did, rolls back
    and they return the stored outcome as a replay. A mismatched request likewise rolls
    back before it answers 422.
    """
    started = time.perf_counter()
    ctx = BuiltinContext(tool_name=tool.name, scope=scope, key=key, session_id=session_id, invocation_id=None)

    def record(status: str, result: Any, error: str) -> ToolInvocation:
        return ToolInvocation.objects.create(
            scope=scope,
            key=key,
            session_id=session_id,
            tool=tool,
            tool_name=tool.name,
            fingerprint=fingerprint,
            arguments=arguments,
            status=status,
            result=result,
            error=error[:4000],
            attempts=1,
            latency_ms=(time.perf_counter() - started) * 1000,
            completed_at=timezone.now(),
        )

    try:
        try:
            with transaction.atomic():
                problem = arguments_errors(tool.parameters, arguments) or claims.cap_problem(
                    tool=tool, session_id=session_id
                )
                if problem:
                    row = record(InvocationStatus.FAILED, None, problem)  # recorded, nothing executed
                else:
                    try:
                        result = json_safe(builtin.fn(ctx, arguments))
                    except ToolError as exc:
                        raise _BuiltinFailed(exc.message) from exc
                    except IntegrityError:
                        raise
                    except Exception as exc:
                        logger.exception("built-in tool %s raised", builtin.name)
                        raise _BuiltinFailed(
                            f"The tool {tool.name!r} failed unexpectedly ({type(exc).__name__})."
                        ) from exc
                    row = record(InvocationStatus.SUCCEEDED, result, "")
        except _BuiltinFailed as failed:
            # The effect is rolled back; the failure is stored (and replayed) like any outcome.
            with transaction.atomic():
                row = record(InvocationStatus.FAILED, None, failed.error)
        return outcome_from_row(row, replayed=False)
    except IntegrityError:
        existing = ToolInvocation.objects.filter(scope=scope, key=key).first()
        if existing is None:  # not a key conflict: e.g. a session id that does not exist
            raise
    return claims.resolve_existing(row=existing, tool=tool, fingerprint=fingerprint)


def execute(*, tool: ToolDefinition, row: ToolInvocation, token: str) -> InvocationOutcome:
    started = time.perf_counter()

    def finish(status: str, result: Any = None, error: str = "", extra_attempts: int = 0) -> InvocationOutcome:
        latency_ms = (time.perf_counter() - started) * 1000
        return complete(
            row=row,
            token=token,
            status=status,
            result=result,
            error=error,
            latency_ms=latency_ms,
            extra_attempts=extra_attempts,
        )

    problem = arguments_errors(tool.parameters, row.arguments)
    if problem:
        return finish(InvocationStatus.FAILED, error=problem)  # recorded, nothing executed
    if tool.kind == ToolKind.BUILTIN:
        builtin = builtin_get(tool.builtin_name)
        if builtin is None:
            return finish(InvocationStatus.FAILED, error=f"No built-in tool is registered as {tool.builtin_name!r}.")
        ctx = BuiltinContext(
            tool_name=tool.name,
            scope=row.scope,
            key=row.key,
            session_id=str(row.session_id) if row.session_id else None,
            invocation_id=row.pk,
        )
        if builtin.atomic:
            return _run_builtin_atomic(row=row, token=token, builtin=builtin, ctx=ctx, started=started)
        status, result, error = _call_builtin(builtin, ctx, row.arguments)
        return finish(status, result, error)
    if tool.kind == ToolKind.HTTP:
        try:
            identity = tool_call_identity(session_id=row.session_id)
            outcome = asyncio.run(http_execute(tool=tool, arguments=row.arguments, key=row.key, identity=identity))
        except ToolExecutionError as exc:
            return finish(InvocationStatus.FAILED, error=exc.message, extra_attempts=max(exc.attempts - 1, 0))
        return finish(InvocationStatus.SUCCEEDED, result=json_safe(outcome.result), extra_attempts=outcome.attempts - 1)
    return finish(InvocationStatus.FAILED, error=f"Unknown tool kind {tool.kind!r}.")
