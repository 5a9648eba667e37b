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
