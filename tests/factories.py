"""Rows the tests create again and again, made one way."""

from __future__ import annotations

import uuid
from typing import Any

from agents_app.models import Agent
from sessions_app.models import VoiceSession


def make_voice_session(agent: Agent, *, caller_id: str = "caller", **fields: Any) -> VoiceSession:
    """A voice session on the agent's published prompt, in a room of its own (no API
    client: pipeline tests that need one use tests/pipeline/conftest.py's make_session)."""
    return VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        caller_id=caller_id,
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        **fields,
    )
