"""Whether a value can be stored as JSON in every database the platform supports.

PostgreSQL's jsonb refuses NUL characters and unpaired surrogates that Python and SQLite
accept, so a request carrying them must get a 4xx, not a 500 from the database.
"""

from __future__ import annotations

from typing import Any


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why `value` cannot be stored as JSON in every supported database (or None)."""
    if depth > 32:
        return "nested too deeply (more than 32 levels)"
    if isinstance(value, str):
        # PostgreSQL jsonb refuses NUL characters and unpaired surrogates.
        if "\x00" in value:
            return "contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an invalid unicode character"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = json_problem(key, depth + 1) or json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for item in value:
            problem = json_problem(item, depth + 1)
            if problem:
                return problem
    return None
