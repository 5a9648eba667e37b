"""JSON Schema checks for tool parameters, shared by the model, the admin and the agent."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable

# Validation never fetches anything: an empty registry with no retrieval, so a `$ref` can
# only point inside the schema itself (jsonschema would otherwise fetch http:// and
# file:// references, with no timeout, from the agent worker).
_NO_RETRIEVAL = Registry()
_REF_KEYS = ("$ref", "$dynamicRef")


def _outside_refs(node: Any, path: str = "") -> list[str]:
    """`$ref`s that leave the document ("#/…" stays inside)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REF_KEYS and isinstance(value, str) and not value.startswith("#"):
                found.append(f"{path or '(root)'}: {value}")
            found.extend(_outside_refs(value, f"{path}/{key}" if path else str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_outside_refs(value, f"{path}/{index}"))
    return found


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=_NO_RETRIEVAL)


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
    outside = _outside_refs(schema)
    if outside:
        return "A $ref may only point inside this schema (#/$defs/…); nothing is fetched from elsewhere: " + "; ".join(
            outside[:3]
        )
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
    try:
        problems = sorted(_validator(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    except Unresolvable as exc:  # a stored schema with an outside $ref: refused, never fetched
        return f"The tool's schema refers to {exc.ref!r}, which is not inside it; fix the tool's parameters."
    if not problems:
        return None
    parts = []
    for problem in problems[:5]:
        where = "/".join(str(p) for p in problem.absolute_path) or "(arguments)"
        parts.append(f"{where}: {problem.message}")
    return "Invalid arguments: " + "; ".join(parts)
