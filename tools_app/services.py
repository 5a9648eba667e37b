"""The idempotency ledger: claim a key, run the tool at most once, store and replay the outcome.

Semantics follow Stripe and the IETF Idempotency-Key draft (docs/tools.md):
- (scope, key) is unique. A claim is an INSERT that fails on conflict, so under any
  concurrency exactly one caller owns a key.
- Same key + same request fingerprint → the stored outcome, `replayed=True`, no re-run.
- Same key + different request → 422. Same key while running → 409. No key → 400.
- A running row carries a lease (settings.TOOL_LEASE_SECONDS). Past it, the owner is
  presumed crashed: the row is re-claimed and re-run only when that cannot double an
  effect (never started, idempotent tool, or an atomic built-in whose effect commits in
  the same transaction as the ledger row); otherwise it becomes INDETERMINATE and is
  never re-run.

`tool_invoke` must not be called inside an outer transaction in production: the claim
has to commit before the tool runs so that concurrent callers see it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from livekit.agents.llm import ToolError

from sessions_app.selectors import tool_call_identity
from tools_app.builtins import Builtin, BuiltinContext, builtin_get
from tools_app.executors import ToolExecutionError, http_execute
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind
from tools_app.schema import arguments_errors
from voiceplatform.errors import Conflict, DomainError, InvalidInput, Malformed

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
DONE = (InvocationStatus.SUCCEEDED, InvocationStatus.FAILED)


class LedgerError(DomainError):
    """A request the ledger refuses. Each kind is also a domain error of its meaning (the
    API edge answers 400, 409 or 422 from it; voiceplatform/api_errors.py)."""

    code = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(type(self).code, message)


class IdempotencyKeyMissing(LedgerError, Malformed):
    code = "idempotency_key_missing"


class IdempotencyKeyInvalid(LedgerError, Malformed):
    code = "idempotency_key_invalid"


class IdempotencyKeyMismatch(LedgerError, InvalidInput):
    code = "idempotency_key_mismatch"


class IdempotencyKeyInUse(LedgerError, Conflict):
    code = "idempotency_key_in_use"


class InvocationIndeterminate(LedgerError, Conflict):
    code = "invocation_indeterminate"


@dataclass(frozen=True)
class InvocationOutcome:
    invocation_id: int
    tool_name: str
    scope: str
    key: str
    status: str
    result: Any
    error: str
    replayed: bool
    attempts: int
    latency_ms: float | None
    session_id: str | None = None


def outcome_from_row(row: ToolInvocation, *, replayed: bool) -> InvocationOutcome:
    return InvocationOutcome(
        invocation_id=row.pk,
        tool_name=row.tool_name,
        scope=row.scope,
        key=row.key,
        status=row.status,
        result=row.result,
        error=row.error,
        replayed=replayed,
        attempts=row.attempts,
        latency_ms=row.latency_ms,
        session_id=str(row.session_id) if row.session_id else None,
    )


def request_fingerprint(*, tool_name: str, arguments: Any) -> str:
    """sha256 of the tool name and the canonical JSON of the arguments (sorted keys, no spaces)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{tool_name}\n{canonical}".encode()).hexdigest()


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.TOOL_LEASE_SECONDS)


def _safe_to_rerun(tool: ToolDefinition | None) -> bool:
    if tool is None:
        return False
    if tool.idempotent:
        return True
    if tool.kind == ToolKind.BUILTIN:
        builtin = builtin_get(tool.builtin_name)
        return builtin is not None and builtin.atomic
    return False


# --- claim ---------------------------------------------------------------------------


def _claim(
    *,
    tool: ToolDefinition,
    scope: str,
    key: str,
    fingerprint: str,
    arguments: dict[str, Any],
    session_id: str | None,
    queued: bool,
) -> tuple[ToolInvocation, str] | InvocationOutcome:
    token = uuid.uuid4().hex
    try:
        with transaction.atomic():
            capped = _cap_problem(tool=tool, session_id=session_id)
            row = ToolInvocation.objects.create(
                scope=scope,
                key=key,
                session_id=session_id,
                tool=tool,
                tool_name=tool.name,
                fingerprint=fingerprint,
                arguments=arguments,
                **(
                    # Refused by the cap: recorded (and replayed) as a failure, nothing run.
                    {"status": InvocationStatus.FAILED, "error": capped, "completed_at": timezone.now()}
                    if capped
                    else {
                        "status": InvocationStatus.RUNNING,
                        "attempts": 0 if queued else 1,
                        "claim_token": token,
                        "lease_expires_at": _lease_until(),
                    }
                ),
            )
        return outcome_from_row(row, replayed=False) if capped else (row, token)
    except IntegrityError:
        existing = ToolInvocation.objects.filter(scope=scope, key=key).first()
        if existing is None:  # not a key conflict: e.g. a session id that does not exist
            raise
    return _resolve_existing(row=existing, tool=tool, fingerprint=fingerprint)


def _cap_problem(*, tool: ToolDefinition, session_id: str | None) -> str:
    """Within the claim's transaction: why this session may not call `tool` again, or "".

    `max_calls_per_session` counts the session's calls of the tool that did not fail,
    whoever made them (the agent worker, an agent key). The session row is locked first,
    so two calls at once cannot both pass the count (PostgreSQL; SQLite runs one writer).
    A retry of a stored call still gets its stored outcome: its INSERT conflicts on the
    key whatever the cap says, and the conflict is resolved as a replay.
    """
    cap = tool.max_calls_per_session
    if not cap or not session_id:
        return ""
    from sessions_app.models import VoiceSession

    VoiceSession.objects.select_for_update().filter(pk=session_id).values_list("pk", flat=True).first()
    used = (
        ToolInvocation.objects.filter(session_id=session_id, tool_name=tool.name)
        .exclude(status=InvocationStatus.FAILED)
        .count()
    )
    if used < cap:
        return ""
    times = "once" if cap == 1 else f"{cap} times"
    return f"The tool {tool.name!r} may be used at most {times} in one call, and that limit is reached."


def _resolve_existing(
    *, row: ToolInvocation, tool: ToolDefinition | None, fingerprint: str, queued_pickup: bool = False
) -> tuple[ToolInvocation, str] | InvocationOutcome:
    """The key is taken: replay, refuse, or (lease expired) take the row over by the rule."""
    for _ in range(3):
        if row.fingerprint != fingerprint:
            raise IdempotencyKeyMismatch(
                f"The Idempotency-Key {row.key!r} was already used for a different request "
                f"(tool {row.tool_name!r} with other arguments). Use a new key for a new request."
            )
        if row.status in DONE:
            ToolInvocation.objects.filter(pk=row.pk).update(replays=F("replays") + 1)
            return outcome_from_row(row, replayed=True)
        if row.status == InvocationStatus.INDETERMINATE:
            raise InvocationIndeterminate(_indeterminate_message(row))
        now = timezone.now()
        never_started = row.attempts == 0
        lease_live = row.lease_expires_at is not None and row.lease_expires_at > now
        if lease_live and not (queued_pickup and never_started):
            raise IdempotencyKeyInUse(
                f"A request with the Idempotency-Key {row.key!r} is still running. Retry later with the same key."
            )
        token = uuid.uuid4().hex
        current = ToolInvocation.objects.filter(pk=row.pk, status=InvocationStatus.RUNNING, claim_token=row.claim_token)
        if never_started or _safe_to_rerun(tool):
            if current.update(claim_token=token, attempts=F("attempts") + 1, lease_expires_at=_lease_until()):
                row.refresh_from_db()
                return row, token
        else:
            error = (
                "The process running this call stopped before it finished (its lease expired). "
                "The tool is not idempotent, so the call is not repeated: check whether it took effect."
            )
            if current.update(
                status=InvocationStatus.INDETERMINATE, error=error, completed_at=now, lease_expires_at=None
            ):
                row.refresh_from_db()
                raise InvocationIndeterminate(_indeterminate_message(row))
        row.refresh_from_db()  # someone else moved the row first: look again
    raise IdempotencyKeyInUse(f"The Idempotency-Key {row.key!r} is contended. Retry later with the same key.")


def _indeterminate_message(row: ToolInvocation) -> str:
    return (
        f"The call of {row.tool_name!r} with Idempotency-Key {row.key!r} was interrupted by a crash and its "
        "outcome is unknown. It will not be run again automatically."
    )


# --- execution -----------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _complete(
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
            outcome = _complete(
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
        with transaction.atomic():  # a savepoint: a failing tool leaves no partial effect
            result = _json_safe(builtin.fn(ctx, arguments))
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


def _invoke_in_one_transaction(
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
                problem = arguments_errors(tool.parameters, arguments) or _cap_problem(tool=tool, session_id=session_id)
                if problem:
                    row = record(InvocationStatus.FAILED, None, problem)  # recorded, nothing executed
                else:
                    try:
                        result = _json_safe(builtin.fn(ctx, arguments))
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
    return _resolve_existing(row=existing, tool=tool, fingerprint=fingerprint)


def _execute(*, tool: ToolDefinition, row: ToolInvocation, token: str) -> InvocationOutcome:
    started = time.perf_counter()

    def finish(status: str, result: Any = None, error: str = "", extra_attempts: int = 0) -> InvocationOutcome:
        latency_ms = (time.perf_counter() - started) * 1000
        return _complete(
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
        return finish(
            InvocationStatus.SUCCEEDED, result=_json_safe(outcome.result), extra_attempts=outcome.attempts - 1
        )
    return finish(InvocationStatus.FAILED, error=f"Unknown tool kind {tool.kind!r}.")


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
    arguments = _json_safe(arguments if arguments is not None else {})
    fingerprint = request_fingerprint(tool_name=tool.name, arguments=arguments)
    queued = allow_background and tool.run_in_background
    builtin = builtin_get(tool.builtin_name) if tool.kind == ToolKind.BUILTIN else None
    claimed: tuple[ToolInvocation, str] | InvocationOutcome
    if builtin is not None and builtin.atomic and not queued:
        claimed = _invoke_in_one_transaction(
            tool=tool,
            builtin=builtin,
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            arguments=arguments,
            session_id=session_id,
        )
    else:
        claimed = _claim(
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
    outcome = _execute(tool=tool, row=row, token=token)
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
        _complete(
            row=row,
            token=row.claim_token,
            status=InvocationStatus.FAILED,
            error="The tool was deleted.",
            latency_ms=0.0,
        )
        return InvocationStatus.FAILED
    try:
        claimed = _resolve_existing(row=row, tool=row.tool, fingerprint=row.fingerprint, queued_pickup=True)
    except InvocationIndeterminate:
        return InvocationStatus.INDETERMINATE
    if isinstance(claimed, InvocationOutcome):
        return "done"
    row, token = claimed
    outcome = _execute(tool=row.tool, row=row, token=token)
    invocation_observe(outcome=outcome)
    return outcome.status
