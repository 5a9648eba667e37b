"""Tools that run only after the caller said yes (`ToolDefinition.requires_confirmation`).

The model cannot confirm on its own: a call (the tool and its exact arguments) runs only
if the agent already asked about that same call, the caller spoke (or typed) since, and
what they said last is a yes. Anything else answers "ask the caller first" and runs
nothing. The check reads the session's own history in the worker, not the model's words.

What it cannot know: whether the caller's "yes" answered this question. A model that
asks something else and then repeats the call on that "yes" gets it through; the
question it must ask is in the tool's answer, and the dashboard shows each step.
"""

from __future__ import annotations

import re
from typing import Any

CONFIRMATION_REQUIRED = "confirmation_required"

_YES = re.compile(
    r"\b(yes|yeah|yep|yup|sure|correct|confirm|confirmed|okay|ok|go ahead|please do|do it|that's right)\b", re.I
)
_NO = re.compile(r"\b(no|not|nope|don't|dont|never|cancel|stop|wait|wrong)\b", re.I)


def caller_said_yes(text: str) -> bool:
    """A plain yes, with no "no", "not", "cancel", "wait"… in the same message."""
    return bool(_YES.search(text or "")) and not _NO.search(text or "")


def caller_messages(history: Any) -> list[str]:
    """The caller's messages in a livekit-agents ChatContext, oldest first."""
    return [
        item.text_content or ""
        for item in getattr(history, "items", [])
        if getattr(item, "type", "") == "message" and getattr(item, "role", "") == "user"
    ]


class ConfirmationGate:
    """One per agent job: the calls the agent was told to ask about, and when."""

    def __init__(self) -> None:
        self._asked_at: dict[str, int] = {}  # request fingerprint → caller messages so far

    def allow(self, *, fingerprint: str, caller_said: list[str]) -> bool:
        """Whether this call may run now; if not, it counts as asked from now on."""
        asked_at = self._asked_at.get(fingerprint)
        if asked_at is not None and len(caller_said) > asked_at and caller_said_yes(caller_said[-1]):
            del self._asked_at[fingerprint]  # one yes, one run
            return True
        self._asked_at[fingerprint] = len(caller_said)
        return False


def confirmation_request(*, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """What the model gets instead of a result: nothing ran, ask, then call again."""
    described = ", ".join(f"{key} {value}" for key, value in arguments.items()) or "no arguments"
    return {
        "status": CONFIRMATION_REQUIRED,
        "message": (
            f"Nothing was done yet. Ask the caller to confirm {tool_name.replace('_', ' ')} with {described}. "
            f"Only after they say yes, call {tool_name} again with exactly the same arguments."
        ),
    }
