"""How support staff's whisper reads in the agent's context (docs/supervisor.md).

The job adds it as a system message (agents_app/runtime/worker/entrypoint.py `whisper`);
any LLM reads it as guidance for its next reply. The offline stand-in, which follows no
instructions, recognises it by this prefix and relays it in its next reply instead
(agents_app/runtime/providers/offline_llm.py), so a whisper's effect can be seen in tests.
"""

from __future__ import annotations

SUPERVISOR_NOTE_PREFIX = (
    "Supervisor note (from the support team, not from the caller; follow it in your next reply and never read it out): "
)


def supervisor_note(text: str) -> str:
    return SUPERVISOR_NOTE_PREFIX + text


def note_text(message: str) -> str | None:
    """The note's text when `message` is a supervisor note, else None."""
    return message[len(SUPERVISOR_NOTE_PREFIX) :] if message.startswith(SUPERVISOR_NOTE_PREFIX) else None
