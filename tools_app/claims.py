"""Claiming an idempotency key: the INSERT that makes one caller its owner, the
per-session cap checked in the same transaction, and what a caller gets when the key is
already taken (a replay, a refusal, or, past the lease, the row taken over by the rule in
tools_app/ledger.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from tools_app.builtins import builtin_get
from tools_app.ledger import (
    DONE,
    IdempotencyKeyInUse,
    IdempotencyKeyMismatch,
    InvocationIndeterminate,
    InvocationOutcome,
    outcome_from_row,
)
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind


def lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.TOOL_LEASE_SECONDS)


def safe_to_rerun(tool: ToolDefinition | None) -> bool:
    if tool is None:
        return False
    if tool.idempotent:
        return True
    if tool.kind == ToolKind.BUILTIN:
        builtin = builtin_get(tool.builtin_name)
        return builtin is not None and builtin.atomic
    return False


def claim(
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
            capped = cap_problem(tool=tool, session_id=session_id)
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
                        "lease_expires_at": lease_until(),
                    }
                ),
            )
        return outcome_from_row(row, replayed=False) if capped else (row, token)
    except IntegrityError:
        existing = ToolInvocation.objects.filter(scope=scope, key=key).first()
        if existing is None:  # not a key conflict: e.g. a session id that does not exist
            raise
    return resolve_existing(row=existing, tool=tool, fingerprint=fingerprint)


def cap_problem(*, tool: ToolDefinition, session_id: str | None) -> str:
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


def resolve_existing(
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
            raise InvocationIndeterminate(indeterminate_message(row))
        now = timezone.now()
        never_started = row.attempts == 0
        lease_live = row.lease_expires_at is not None and row.lease_expires_at > now
        if lease_live and not (queued_pickup and never_started):
            raise IdempotencyKeyInUse(
                f"A request with the Idempotency-Key {row.key!r} is still running. Retry later with the same key."
            )
        token = uuid.uuid4().hex
        current = ToolInvocation.objects.filter(pk=row.pk, status=InvocationStatus.RUNNING, claim_token=row.claim_token)
        if never_started or safe_to_rerun(tool):
            if current.update(claim_token=token, attempts=F("attempts") + 1, lease_expires_at=lease_until()):
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
                raise InvocationIndeterminate(indeterminate_message(row))
        row.refresh_from_db()  # someone else moved the row first: look again
    raise IdempotencyKeyInUse(f"The Idempotency-Key {row.key!r} is contended. Retry later with the same key.")


def indeterminate_message(row: ToolInvocation) -> str:
    return (
        f"The call of {row.tool_name!r} with Idempotency-Key {row.key!r} was interrupted by a crash and its "
        "outcome is unknown. It will not be run again automatically."
    )
