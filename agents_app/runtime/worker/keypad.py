"""A phone caller's key presses (DTMF, received through LiveKit's SIP service) as input
the agent acts on: the keys of one entry are collected and handed on together, when the
caller presses `#` or stops pressing for KEYPAD_PAUSE_SECONDS ("1", "2", "3", pause →
"123"; "4", "2", "#" → "42#"), the way phone menus read an account number or a choice.

The agent answers an entry like a spoken turn (agents_app/runtime/worker/entrypoint.py):
it is interrupted, and the entry becomes the caller's turn, in words an LLM understands
(`keypad_text`). Runs on the job's event loop; no database, no network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DIGITS = frozenset("0123456789*#ABCD")
KEYPAD_PAUSE_SECONDS = 2.0
MAX_ENTRY = 32  # a longer run of keys is handed on in pieces


def keypad_text(digits: str) -> str:
    """The caller's turn for an entry, as the LLM and the transcript see it."""
    return f"(The caller pressed {' '.join(digits)} on the phone keypad.)"


class Keypad:
    """Collects key presses into entries; `on_entry(digits)` gets each finished one."""

    def __init__(self, on_entry: Callable[[str], None], *, pause: float = KEYPAD_PAUSE_SECONDS) -> None:
        self._on_entry = on_entry
        self._pause = pause
        self._digits = ""
        self._timer: asyncio.TimerHandle | None = None

    def press(self, digit: str) -> None:
        digit = (digit or "").strip().upper()
        if len(digit) != 1 or digit not in DIGITS:
            return
        self._digits += digit
        self._cancel()
        if digit == "#" or len(self._digits) >= MAX_ENTRY:
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(self._pause, self.flush)

    def flush(self) -> None:
        self._cancel()
        digits, self._digits = self._digits, ""
        if digits:
            self._on_entry(digits)

    def close(self) -> None:
        self._cancel()
        self._digits = ""

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
