"""What a built-in tool may do to the live call it serves: press keys, transfer the caller.

The agent job that serves a phone call registers its `CallControls` here for the call's
session (agents_app/runtime/worker/phone_controls.py) and removes them when the call
ends. The telephony built-ins (`send_keypad_digits`, `transfer_call` in
tools_app/builtins.py) find them by session id. They run in a pool thread of that same
process (the ledger path of tools_app/agent_tools.py), so the registry is per process: a
tool invoked anywhere else (the tools API, a Celery worker) finds nothing and fails with
a message, never acting on a call it does not hold.
"""

from __future__ import annotations

import re
import threading
from typing import Protocol

# What a phone keypad sends (RFC 4733 events 0-11).
KEYPAD_DIGITS_RE = re.compile(r"^[0-9*#]{1,32}$")
_KEYPAD_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "star": "*",
    "hash": "#",
    "pound": "#",
}


def keypad_digits(text: str) -> str:
    """The keypad keys named in `text`, in order: digits, `*`, `#` and their words
    ("press one two then hash" → "12#")."""
    keys = []
    for token in re.findall(r"[a-z]+|[0-9*#]", text.lower()):
        key = _KEYPAD_WORDS.get(token, token if token in "0123456789*#" else "")
        keys.append(key)
    return "".join(keys)


class CallControls(Protocol):
    """A live phone call's controls, called from a tool's pool thread (they block it)."""

    def send_digits(self, digits: str) -> None:
        """Send `digits` to the caller as DTMF tones, one after another."""

    def transfer(self, transfer_to: str) -> None:
        """Hand the caller to `transfer_to` (SIP REFER); returns once the transfer is accepted."""


_lock = threading.Lock()
_by_session: dict[str, CallControls] = {}


def register(session_id: str, controls: CallControls) -> None:
    with _lock:
        _by_session[str(session_id)] = controls


def unregister(session_id: str, controls: CallControls) -> None:
    with _lock:
        if _by_session.get(str(session_id)) is controls:
            del _by_session[str(session_id)]


def controls_for(session_id: str | None) -> CallControls | None:
    if not session_id:
        return None
    with _lock:
        return _by_session.get(str(session_id))
