"""JSON Schema checks for tool parameters, shared by the model, the admin and the agent."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError


def schema_errors(schema: Any) -> str | None:
    """A clear message if `schema` is not a valid object schema for tool arguments."""
    if not isinstance(schema, dict):
        return "Parameters must be a JSON object (a JSON Schema)."
    if not schema:
        return None  # a tool without arguments
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"Invalid JSON Schema at {where}: {exc.message}"
    if schema.get("type") != "object":
        return 'Tool parameters must be a schema of "type": "object".'
    return None


def arguments_errors(schema: dict[str, Any] | None, arguments: Any) -> str | None:
    """A message naming every way `arguments` break the tool's schema, or None if valid.

    The LLM reads this message (as a ToolError) and can correct its next call, so it
    names the path of each problem.
    """
    if not isinstance(arguments, dict):
        return "Arguments must be a JSON object."
    if not schema:
        return None
    validator = Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not problems:
        return None
    parts = []
    for problem in problems[:5]:
        where = "/".join(str(p) for p in problem.absolute_path) or "(arguments)"
        parts.append(f"{where}: {problem.message}")
    return "Invalid arguments: " + "; ".join(parts)
