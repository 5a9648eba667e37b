"""Reads for tools: the agent's tool set, lookups by name, ledger rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation, ToolKind


def tools_for_agent(*, agent_id: int) -> QuerySet[ToolDefinition]:
    return ToolDefinition.objects.filter(enabled=True, agents__id=agent_id).distinct().order_by("name")


def tool_by_name(*, name: str) -> ToolDefinition | None:
    return ToolDefinition.objects.filter(name=name, enabled=True).first()


def invocation_get(*, scope: str, key: str) -> ToolInvocation | None:
    return ToolInvocation.objects.filter(scope=scope, key=key).first()


def invocations_latest_of_session(*, session_id: Any, limit: int) -> QuerySet[ToolInvocation]:
    """The session's `limit` latest ledger rows (agent calls), newest first."""
    return ToolInvocation.objects.filter(session_id=session_id).order_by("-created_at", "-pk")[:limit]


def http_tools_of_active_agents() -> QuerySet[ToolDefinition]:
    """Enabled HTTP tools that some active agent can call (`manage.py doctor`)."""
    return (
        ToolDefinition.objects.filter(enabled=True, kind=ToolKind.HTTP, agents__active=True).distinct().order_by("name")
    )


def invocations_lease_expired(*, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Running ledger rows whose owner's lease has lapsed (its process presumably died)."""
    return list(
        ToolInvocation.objects.filter(status=InvocationStatus.RUNNING, lease_expires_at__lt=now or timezone.now())
        .order_by("lease_expires_at")
        .values_list("pk", flat=True)[:limit]
    )
