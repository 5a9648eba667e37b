"""A JSON Schema for every live message, by its `type` (checked in tests, Zulip-style).

`check(message)` validates one message, channel-layer or websocket, against the schema of
its `type` and raises `LiveMessageError` if it does not fit or its type is unknown.
tests/conftest.py runs it on every message the tests publish to the channel layer and on
every frame the consumers send, so a builder in `sessions_app/live/messages.py` and its
schema cannot drift apart unnoticed. Production code does not validate (the hot path of
bench/fanout.py stays as it is).

The client's own frames (`ping`, `resync` requests) are checked by the consumers.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError


class LiveMessageError(ValueError):
    """A message that is not one of the live message types, or does not fit its schema."""


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with exactly these fields (`optional` ones may be missing), nothing else."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


def _type(name: str) -> dict[str, Any]:
    return {"const": name}


_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_SEQ = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_JSON_OBJECT = {"type": "object"}
_MS = {"type": ["number", "null"], "minimum": 0}
_UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
_TIME = {"type": ["string", "null"], "format": "date-time"}

# --- the shapes the messages carry (sessions_app/live/messages.py builds them) -------------

ROW = _obj(
    {
        "id": _UUID,
        "agent": _STR_OR_NULL,
        "agent_name": _STR_OR_NULL,
        "prompt_version": {"type": ["integer", "null"]},
        "caller_id": _STR,
        "room": _STR,
        "channel": {"enum": ["webrtc", "phone"]},
        "direction": {"enum": ["inbound", "outbound"]},
        "state": {"enum": ["created", "active", "reconnecting", "ended", "failed"]},
        "end_reason": _STR,
        "turns": _SEQ,
        "interrupts": _SEQ,
        "reconnects": _SEQ,
        "last_e2e_ms": _MS,
        "created_at": _TIME,
        "started_at": _TIME,
        "ended_at": _TIME,
        "seq": _SEQ,
    }
)

EVENT = _obj({"seq": _SEQ, "type": {"type": "string", "minLength": 1}, "payload": _JSON_OBJECT, "created_at": _TIME})

# The dashboard socket leaves the transcript texts out (messages.compact_turn_completed).
TURN = _obj(
    {
        "index": _INT,
        "interrupted": _BOOL,
        "interrupt_source": {"enum": ["", "vad", "client"]},
        "stages_ms": {"type": "object", "additionalProperties": _MS},
        "breaches": {"type": "array", "items": _STR},
        "heard_gap_ms": _MS,
        "heard_barge_in_ms": _MS,
        "heard_difference_ms": {"type": ["number", "null"]},
        "heard_mismatch": _BOOL,
        "tool_calls": {"type": "array", "items": _JSON_OBJECT},
        "error": _STR,
        "started_at": _TIME,
        "created_at": _TIME,
    },
    {"user_text": _STR, "generated_text": _STR, "heard_text": _STR},
)

# --- live messages: channel layer (`dashboard`, `session.<id>`) and websockets ---------------

SESSION_UPDATED = _obj(
    {"type": _type("session.updated"), "session_id": _UUID, "seq": _SEQ, "session": ROW},
    {"repaired": {"const": True}},
)
EVENT_ADDED = _obj({"type": _type("event.added"), "session_id": _UUID, "seq": _SEQ, "event": EVENT})
TURN_COMPLETED = _obj({"type": _type("turn.completed"), "session_id": _UUID, "seq": _SEQ, "turn": TURN})
TURN_HEARD = _obj({"type": _type("turn.heard"), "session_id": _UUID, "seq": _SEQ, "turn": TURN})
_LIVE = {"oneOf": [SESSION_UPDATED, EVENT_ADDED, TURN_COMPLETED, TURN_HEARD]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "session.updated": SESSION_UPDATED,
    "event.added": EVENT_ADDED,
    "turn.completed": TURN_COMPLETED,
    "turn.heard": TURN_HEARD,
    # Channel layer only: messages published together, in order.
    "live.batch": _obj({"type": _type("live.batch"), "messages": {"type": "array", "minItems": 2, "items": _LIVE}}),
    # Channel layer, `agent.<id>`: control of the agent job serving a session.
    "agent.interrupt": _obj({"type": _type("agent.interrupt"), "session_id": _UUID, "source": _STR, "event_seq": _SEQ}),
    "agent.end": _obj({"type": _type("agent.end"), "session_id": _UUID, "reason": _STR}),
    "agent.crash": _obj({"type": _type("agent.crash")}),
    # Websocket frames only.
    "snapshot": {
        "oneOf": [
            _obj(
                {
                    "type": _type("snapshot"),
                    "scope": {"const": "dashboard"},
                    "sessions": {"type": "array", "items": ROW},
                }
            ),
            _obj(
                {
                    "type": _type("snapshot"),
                    "scope": {"const": "session"},
                    "session_id": _UUID,
                    "seq": _SEQ,
                    "session": ROW,
                    "budgets_ms": {"type": "object", "additionalProperties": _INT},
                    "stages": {"type": "array", "items": _obj({"key": _STR, "label": _STR})},
                    "turns": {"type": "array", "items": TURN},
                    "events": {"type": "array", "items": EVENT},
                    "report": {"type": ["object", "null"]},
                }
            ),
        ]
    },
    "resync": _obj(
        {
            "type": _type("resync"),
            "session_id": _UUID,
            "after_seq": _SEQ,
            "seq": _SEQ,
            "events": {"type": "array", "items": EVENT},
            "turns": {"type": "array", "items": TURN},
            "session": {"oneOf": [ROW, {"type": "null"}]},
            "complete": _BOOL,
        }
    ),
    "batch": _obj({"type": _type("batch"), "messages": {"type": "array", "minItems": 2, "items": _LIVE}}),
    "error": _obj({"type": _type("error"), "detail": _STR}),
    "pong": _obj({"type": _type("pong")}),
}

_VALIDATORS = {
    kind: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for kind, schema in SCHEMAS.items()
}
for _validator in _VALIDATORS.values():
    _validator.check_schema(_validator.schema)


def check(message: Any) -> None:
    """Raise LiveMessageError unless `message` is a live message that fits its type's schema."""
    if not isinstance(message, dict):
        raise LiveMessageError(f"a live message is a JSON object, not {type(message).__name__}")
    kind = message.get("type")
    validator = _VALIDATORS.get(kind) if isinstance(kind, str) else None
    if validator is None:
        raise LiveMessageError(f"unknown live message type {kind!r}")
    try:
        validator.validate(message)
    except ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(top)"
        raise LiveMessageError(f"{kind} at {where}: {exc.message}") from exc
