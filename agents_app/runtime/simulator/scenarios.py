"""Scenario files: loading and validation with errors that point at the broken line.

A scenario is a YAML file under `agents_app/runtime/scenarios/` (or any path given to
`--scenario`): a name, the agent slug, a list of steps (each a mapping with exactly one
step name) and the expectations a successful call meets. See docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agents_app.runtime.simulator.outages import IMPAIRMENT_SCHEMA, OUTAGE_SCHEMA

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

_EMPTY = {"type": "object", "additionalProperties": False, "properties": {}}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 600}
_SECONDS = {"type": "number", "minimum": 0, "maximum": 120}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 500}

STEP_SCHEMAS: dict[str, dict[str, Any]] = {
    # Speak a line (Piper voice), paced in real time.
    "say": _TEXT,
    # Wait until the agent has spoken and gone quiet again.
    "wait_for_agent": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"timeout": _TIMEOUT, "quiet": _SECONDS},
    },
    # Wait for `after` seconds of agent speech, then speak over it.
    "barge_in": {
        "type": "object",
        "additionalProperties": False,
        "required": ["say"],
        "properties": {"after": _SECONDS, "say": _TEXT, "timeout": _TIMEOUT},
    },
    # Wait for `after` seconds of agent speech, then POST /sessions/{id}/interrupt.
    "interrupt": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"after": _SECONDS, "timeout": _TIMEOUT},
    },
    "pause": _SECONDS,
    # Wait until the session has stored this many turns (GET /sessions/{id}).
    "wait_turns": {
        "type": "object",
        "additionalProperties": False,
        "required": ["count"],
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 100},
            "with_tool_call": {"type": "boolean"},
            "timeout": _TIMEOUT,
        },
    },
    "drop": _EMPTY,
    "reconnect": _EMPTY,
    "agent_restart": _EMPTY,
    "retry_tool": _EMPTY,
    "end": _EMPTY,
}

EXPECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_turns": {"type": "integer", "minimum": 0},
        "min_interrupted": {"type": "integer", "minimum": 0},
        "interrupt_source": {"enum": ["vad", "client"]},
        "min_reconnects": {"type": "integer", "minimum": 0},
        "min_agent_restarts": {"type": "integer", "minimum": 0},
        "min_tool_calls": {"type": "integer", "minimum": 0},
        "min_tool_replays": {"type": "integer", "minimum": 0},
        "one_side_effect": {"type": "boolean"},
        "greeting_once": {"type": "boolean"},
    },
}

SCENARIO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"},
        "description": {"type": "string"},
        "agent": {"type": "string", "minLength": 1, "maxLength": 64},
        "caller_id": {"type": "string", "minLength": 1, "maxLength": 100},
        "timeout": _TIMEOUT,
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": sorted(STEP_SCHEMAS)},
                "properties": STEP_SCHEMAS,
            },
        },
        "expect": EXPECT_SCHEMA,
        # Issue 11: a scripted provider outage, and network impairment of the caller's audio.
        "outage": OUTAGE_SCHEMA,
        "impairment": IMPAIRMENT_SCHEMA,
    },
}


class ScenarioError(ValueError):
    """A scenario that cannot be found, parsed or validated (the message says where)."""


@dataclass(frozen=True)
class Step:
    kind: str
    args: Any

    def arg(self, key: str, default: Any = None) -> Any:
        return self.args.get(key, default) if isinstance(self.args, dict) else default


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: list[Step]
    path: str = ""
    description: str = ""
    agent: str = "demo"
    caller_id: str = ""
    timeout: float = 180.0
    expect: dict[str, Any] = field(default_factory=dict)
    outage: dict[str, Any] = field(default_factory=dict)
    impairment: dict[str, Any] = field(default_factory=dict)


def available() -> list[str]:
    """Names of the scenarios that ship with the platform."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def _where(error: jsonschema.ValidationError) -> str:
    parts: list[str] = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
    return "".join(parts) or "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    if error.validator == "propertyNames" or "propertyNames" in error.schema_path:
        return f"unknown step {error.instance!r}; steps are: {', '.join(sorted(STEP_SCHEMAS))}"
    if error.validator in ("minProperties", "maxProperties") and list(error.absolute_path)[:1] == ["steps"]:
        return 'each step is a mapping with exactly one step name, e.g. `- say: "Hello"`'
    if error.validator == "additionalProperties" and not error.absolute_path:
        return f"{error.message}; allowed keys: {', '.join(sorted(SCENARIO_SCHEMA['properties']))}"
    return error.message


def parse(data: Any, *, source: str = "<scenario>") -> Scenario:
    """Validate already-loaded YAML data; raise ScenarioError listing every problem."""
    validator = jsonschema.Draft202012Validator(SCENARIO_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = [f"  - {_where(e)}: {_explain(e)}" for e in errors[:10]]
        raise ScenarioError(f"{source} is not a valid scenario:\n" + "\n".join(lines))
    steps = [Step(kind=next(iter(item)), args=next(iter(item.values()))) for item in data["steps"]]
    kinds = [s.kind for s in steps]
    if "reconnect" in kinds and "drop" not in kinds[: kinds.index("reconnect")]:
        raise ScenarioError(f"{source}: a `reconnect` step needs a `drop` step before it")
    return Scenario(
        name=data["name"],
        steps=steps,
        path=source,
        description=data.get("description", ""),
        agent=data.get("agent", "demo"),
        caller_id=data.get("caller_id", ""),
        timeout=float(data.get("timeout", 180.0)),
        expect=dict(data.get("expect") or {}),
        outage=dict(data.get("outage") or {}),
        impairment=dict(data.get("impairment") or {}),
    )


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name (`barge-in`) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ScenarioError(
            f"no scenario {name_or_path!r}: not a file, and not one of the shipped scenarios ({', '.join(available())})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path} is not valid YAML: {exc}") from exc
    return parse(data, source=str(path))
