"""Everything a job needs from the DB, loaded once with the async ORM at job start."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents_app.models import Agent
from agents_app.services import prompt_render, prompt_values_from_metadata

# A resumed job shows its model at most this many of the session's latest ledger rows.
RESTORED_TOOL_CALLS_MAX = 20


@dataclass(frozen=True)
class StoredTurn:
    index: int
    user_text: str
    agent_text: str  # heard text for interrupted turns: what the caller actually heard
    at: datetime | None = None  # when the turn was stored (its end)


@dataclass(frozen=True)
class StoredToolCall:
    """A ledger row of the session, as a resumed job's model is shown it."""

    name: str
    arguments: dict[str, Any]
    status: str  # tools_app.models.InvocationStatus
    result: Any
    error: str
    at: datetime


@dataclass(frozen=True)
class JobConfig:
    session_id: str
    session_state: str
    caller_identity: str
    agent: Agent
    prompt_version: int
    instructions: str
    greeting: str
    budgets_ms: dict[str, int]
    turns: list[StoredTurn] = field(default_factory=list)
    # Loaded for a resumed job only: the tool calls earlier jobs of the session made,
    # including one a dead job left running (its outcome unknown).
    tool_calls: list[StoredToolCall] = field(default_factory=list)
    # A phone call (LiveKit's SIP service): the caller hanging up ends the session.
    phone: bool = False
    # A call the platform places (POST /calls) and nobody has answered yet: the job dials
    # `dial_to` through the line's outbound trunk before it greets.
    dial_to: str = ""
    outbound_trunk_id: str = ""

    @property
    def next_turn_index(self) -> int:
        return (self.turns[-1].index + 1) if self.turns else 0

    @property
    def resumed(self) -> bool:
        """A previous job of this session already spoke (reconnect or agent restart)."""
        return bool(self.turns)


async def load_job_config(session_id: str) -> JobConfig:
    """Load the pinned prompt, the agent and the stored turns (async ORM, no loop blocking)."""
    from sessions_app.models import Turn, VoiceSession
    from sessions_app.tokens import session_caller_identity

    session = await VoiceSession.objects.select_related("agent", "prompt_version", "phone_line").aget(pk=session_id)
    values = prompt_values_from_metadata(
        version=session.prompt_version, metadata=session.metadata, trusted=session.api_client_id is not None
    )
    rendered = prompt_render(version=session.prompt_version, values=values)
    turns = [
        StoredTurn(
            index=t["index"],
            user_text=t["user_text"],
            agent_text=t["heard_text"] if t["interrupted"] else (t["generated_text"] or t["heard_text"]),
            at=t["created_at"],
        )
        async for t in Turn.objects.filter(session_id=session.pk)
        .order_by("index")
        .values("index", "user_text", "generated_text", "heard_text", "interrupted", "created_at")
    ]
    tool_calls = await _stored_tool_calls(session.pk) if turns else []
    # Dial only a placed call that was never answered (a restarted job finds it active).
    dials = session.direction == "outbound" and session.state == "created" and session.phone_line is not None
    return JobConfig(
        session_id=str(session.pk),
        session_state=session.state,
        caller_identity=session_caller_identity(
            caller_id=session.caller_id, caller_participant=session.caller_participant
        ),
        phone=session.channel == "phone",
        dial_to=session.caller_number if dials else "",
        outbound_trunk_id=session.phone_line.livekit_outbound_trunk_id if dials and session.phone_line else "",
        agent=session.agent,
        prompt_version=session.prompt_version.number,
        instructions=rendered["instructions"],
        greeting=rendered["greeting"],
        budgets_ms=session.agent.budgets_ms(),
        turns=turns,
        tool_calls=tool_calls,
    )


async def _stored_tool_calls(session_id: Any) -> list[StoredToolCall]:
    from tools_app.selectors import invocations_latest_of_session

    rows = invocations_latest_of_session(session_id=session_id, limit=RESTORED_TOOL_CALLS_MAX).values(
        "tool_name", "arguments", "status", "result", "error", "created_at"
    )
    latest = [row async for row in rows]
    return [
        StoredToolCall(
            name=row["tool_name"],
            arguments=row["arguments"] or {},
            status=row["status"],
            result=row["result"],
            error=row["error"],
            at=row["created_at"],
        )
        for row in reversed(latest)
    ]
