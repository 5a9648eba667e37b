"""Polling for something another process does, in tests that start real servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, what: str, timeout: float = 30.0, interval: float = 0.25) -> T:
    """`check()`'s first truthy value within `timeout` seconds; an AssertionError naming
    `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
