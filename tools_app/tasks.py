"""Celery tasks for tools that run in the background (ToolDefinition.run_in_background)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from tools_app.ledger import IdempotencyKeyInUse
from tools_app.services import invocation_run_queued


@shared_task(bind=True, acks_late=True, name="tools_app.tasks.tool_invocation_run", max_retries=10)
def tool_invocation_run(self, invocation_id: int) -> str:  # type: ignore[no-untyped-def]
    """acks_late: a worker crash redelivers the task; the ledger makes the redelivery harmless
    (done → nothing to do; running with a live lease → retried after the lease; expired →
    the lease rule of claims.resolve_existing)."""
    try:
        return invocation_run_queued(invocation_id=invocation_id)
    except IdempotencyKeyInUse as exc:
        raise self.retry(exc=exc, countdown=settings.TOOL_LEASE_SECONDS) from exc
