"""The idempotency ledger's vocabulary: its refusals, an invocation's outcome, a request's fingerprint.

Semantics follow Stripe and the IETF Idempotency-Key draft (docs/tools.md):
- (scope, key) is unique. A claim is an INSERT that fails on conflict, so under any
  concurrency exactly one caller owns a key (tools_app/claims.py).
- Same key + same request fingerprint → the stored outcome, `replayed=True`, no re-run.
- Same key + different request → 422. Same key while running → 409. No key → 400.
- A running row carries a lease (settings.TOOL_LEASE_SECONDS). Past it, the owner is
  presumed crashed: the row is re-claimed and re-run only when that cannot double an
  effect (never started, idempotent tool, or an atomic built-in whose effect commits in
  the same transaction as the ledger row); otherwise it becomes INDETERMINATE and is
  never re-run.

The entry points are in tools_app/services.py (`tool_invoke`, `invocation_run_queued`);
claiming a key is tools_app/claims.py, running a claimed call tools_app/execution.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tools_app.models import InvocationStatus, ToolInvocation
from voiceplatform.errors import Conflict, DomainError, InvalidInput, Malformed

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
