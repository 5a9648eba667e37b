"""Celery tasks for tools that run in the background (ToolDefinition.run_in_background)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from tools_app.ledger import IdempotencyKeyInUse
from tools_app.selectors import invocations_lease_expired
from tools_app.services import invocation_run_queued

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, name="tools_app.tasks.tool_invocation_run", max_retries=10)
def tool_invocation_run(self, invocation_id: int) -> str:  # type: ignore[no-untyped-def]
    """acks_late: a worker crash redelivers the task; the ledger makes the redelivery harmless
    (done → nothing to do; running with a live lease → retried after the lease; expired →
    the lease rule of claims.resolve_existing)."""
    try:
        return invocation_run_queued(invocation_id=invocation_id)
    except IdempotencyKeyInUse as exc:
        raise self.retry(exc=exc, countdown=settings.TOOL_LEASE_SECONDS) from exc


@shared_task(name="tools_app.tasks.tool_invocations_resolve_expired")
def tool_invocations_resolve_expired() -> dict[str, int]:
    """Beat: settle calls whose owner died mid-call (an agent job or a worker killed) and
    that nobody retries, by the lease rule (tools_app/claims.py): re-run when that is safe
    (never started, idempotent, an atomic built-in whose effect rolled back), otherwise
    `indeterminate`, never run twice. Safe to run twice at once: each row is moved by a
    conditional update on its claim."""
    outcomes: dict[str, int] = {}
    for invocation_id in invocations_lease_expired():
        try:
            outcome = invocation_run_queued(invocation_id=invocation_id)
        except IdempotencyKeyInUse:
            outcome = "contended"  # another sweep or a retry took it first
        outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + 1
    if outcomes:
        logger.warning("settled tool calls left running by a dead owner: %s", outcomes)
    return outcomes
