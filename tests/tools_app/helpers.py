"""Helpers shared by the tools_app tests."""

from __future__ import annotations

from typing import Any


async def in_db_thread(fn: Any) -> Any:
    """Run ORM code from an async test in a pool thread that closes its connection after
    (Django's a* ORM methods would leave one open in asgiref's shared thread)."""
    from tools_app.agent_tools import _in_thread

    return await _in_thread(fn)()
