"""Every live message is built here: channel-layer messages and websocket frames.

The shapes the messages carry are built here too, once: the dashboard row of a session
(`session_row`), an event (`event_as_dict`) and a turn (`turn_as_dict`); snapshots and
resyncs read them from the DB through the selectors, which use these builders. Each
message type has a JSON Schema in `sessions_app/live/schemas.py`; docs/CONTRACTS.md and
docs/dashboard.md describe them.

Channel layer, to `dashboard` and `session.<id>`: `session.updated`, `event.added`,
`turn.completed`, `turn.heard` (each with `session_id` and the per-session `seq`), several of them as
one `live.batch`. To `agent.<id>`: `agent.interrupt`, `agent.end`, `agent.crash`.
Websocket frames: `snapshot`, `resync`, `error`, `pong`, the live messages, and `batch`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessions_app.models import SessionEvent, Turn, VoiceSession

BATCH_TYPE = "live.batch"
# Text fields the dashboard table never shows; left out of its stream to keep frames small.
DASHBOARD_TURN_OMIT = ("user_text", "generated_text", "heard_text")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


# --- shapes carried by the messages -------------------------------------------------------


def session_row(session: VoiceSession) -> dict[str, Any]:
    """A session as a dashboard row: `session.updated`, snapshots, resyncs, the page."""
    return {
        "id": str(session.id),
        "agent": session.agent.slug if session.agent_id else None,
        "agent_name": session.agent.name if session.agent_id else None,
        "prompt_version": session.prompt_version.number if session.prompt_version_id else None,
        "caller_id": session.caller_id,
        "room": session.room_shown,
        "channel": session.channel,
        "direction": session.direction,
        "state": session.state,
        "end_reason": session.end_reason,
        "turns": session.turn_count,
        "interrupts": session.interrupt_count,
        "reconnects": session.reconnect_count,
        "last_e2e_ms": session.last_e2e_ms,
        "created_at": _iso(session.created_at),
        "started_at": _iso(session.started_at),
        "ended_at": _iso(session.ended_at),
        "seq": session.last_seq,
    }


def event_as_dict(event: SessionEvent) -> dict[str, Any]:
    """A session event: `event.added`, snapshots and resyncs."""
    return {"seq": event.seq, "type": event.type, "payload": event.payload, "created_at": _iso(event.created_at)}


def turn_as_dict(turn: Turn) -> dict[str, Any]:
    """A turn: `turn.completed`, snapshots, resyncs and the client API's session detail."""
    return {
        "index": turn.index,
        "user_text": turn.user_text,
        "generated_text": turn.generated_text,
        "heard_text": turn.heard_text,
        "interrupted": turn.interrupted,
        "interrupt_source": turn.interrupt_source,
        "stages_ms": turn.stage_ms(),
        "breaches": list(turn.breaches),
        # The caller's report (docs/latency.md): null until it arrives.
        "heard_gap_ms": turn.heard_gap_ms,
        "heard_barge_in_ms": turn.heard_barge_in_ms,
        "heard_difference_ms": turn.heard_difference_ms,
        "heard_mismatch": turn.heard_mismatch,
        "tool_calls": list(turn.tool_calls),
        "error": turn.error,
        "started_at": _iso(turn.started_at),
        "created_at": _iso(turn.created_at),
    }


# --- live messages (channel layer, then forwarded to websockets) --------------------------


def session_updated(row: dict[str, Any], *, repaired: bool = False) -> dict[str, Any]:
    """A session's row changed (`repaired`: re-read from the DB after a seq gap)."""
    message = {"type": "session.updated", "session_id": row["id"], "seq": row["seq"], "session": row}
    if repaired:
        message["repaired"] = True
    return message


def event_added(event: SessionEvent) -> dict[str, Any]:
    """An event was appended to a session's timeline."""
    return {"type": "event.added", "session_id": str(event.session_id), "seq": event.seq, "event": event_as_dict(event)}


def turn_completed(turn: Turn, *, seq: int) -> dict[str, Any]:
    """A turn was recorded (`seq`: its `turn.completed` event's)."""
    return {"type": "turn.completed", "session_id": str(turn.session_id), "seq": seq, "turn": turn_as_dict(turn)}


def turn_heard(turn: Turn, *, seq: int) -> dict[str, Any]:
    """The caller reported what it heard of a turn (`seq`: its `turn.heard` event's)."""
    return {"type": "turn.heard", "session_id": str(turn.session_id), "seq": seq, "turn": turn_as_dict(turn)}


def live_batch(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One layer message for several: the message itself, or a `live.batch` of them (in order)."""
    return messages[0] if len(messages) == 1 else {"type": BATCH_TYPE, "messages": messages}


def unbatch(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a layer message carries, in order."""
    return list(message["messages"]) if message.get("type") == BATCH_TYPE else [message]


# --- control messages to an agent job (`agent.<id>`) --------------------------------------


def agent_interrupt(session_id: Any, *, source: str, event_seq: int) -> dict[str, Any]:
    return {"type": "agent.interrupt", "session_id": str(session_id), "source": source, "event_seq": event_seq}


def agent_end(session_id: Any, *, reason: str) -> dict[str, Any]:
    return {"type": "agent.end", "session_id": str(session_id), "reason": reason}


def agent_whisper(session_id: Any, *, text: str, event_seq: int) -> dict[str, Any]:
    """Support staff's guidance for the agent's next reply: never spoken, never shown to the caller."""
    return {"type": "agent.whisper", "session_id": str(session_id), "text": text, "event_seq": event_seq}


def agent_crash() -> dict[str, Any]:
    """Fault injection: the job SIGKILLs itself (only with AGENT_FAULT_INJECTION)."""
    return {"type": "agent.crash"}


# --- websocket frames ---------------------------------------------------------------------


def public(message: dict[str, Any]) -> dict[str, Any]:
    """A live message as browsers get it: channel-layer internals ("__" keys) left out."""
    return {k: v for k, v in message.items() if not k.startswith("__")}


def compact_turn_completed(message: dict[str, Any]) -> dict[str, Any]:
    """`turn.completed` for the dashboard table: without the transcript texts."""
    turn = {k: v for k, v in (message.get("turn") or {}).items() if k not in DASHBOARD_TURN_OMIT}
    return {**public(message), "turn": turn}


def dashboard_snapshot(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "snapshot", "scope": "dashboard", "sessions": rows}


def session_snapshot(session_id: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """`snapshot` holds what `dashboard_selectors.session_snapshot` reads."""
    return {
        "type": "snapshot",
        "scope": "session",
        "session_id": session_id,
        "seq": snapshot["session"]["seq"],
        **snapshot,
    }


def resync(
    session_id: str,
    *,
    after_seq: int,
    events: list[dict[str, Any]],
    turns: list[dict[str, Any]],
    row: dict[str, Any] | None,
    complete: bool,
) -> dict[str, Any]:
    """The events after `after_seq` (with their turns and the row), read from the DB."""
    return {
        "type": "resync",
        "session_id": session_id,
        "after_seq": after_seq,
        "seq": events[-1]["seq"] if events else after_seq,
        "events": events,
        "turns": turns,
        "session": row,
        "complete": complete,
    }


def error(detail: str) -> dict[str, Any]:
    return {"type": "error", "detail": detail}


def pong() -> dict[str, Any]:
    return {"type": "pong"}


def batch_frame(texts: Iterable[str]) -> str:
    """Several encoded live messages as one websocket frame: `{"type": "batch", "messages": [...]}`."""
    return '{"type": "batch", "messages": [' + ", ".join(texts) + "]}"


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message)
