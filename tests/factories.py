"""Rows the tests create again and again, made one way."""

from __future__ import annotations

import uuid
from typing import Any

from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.models import VoiceSession


def make_fresh_agent(**fields: Any) -> Agent:
    """An agent with a unique slug and a published prompt: fresh metric label values, so
    counts start at zero in the shared registry."""
    fields.setdefault("name", "Fresh agent")
    agent = Agent.objects.create(slug=f"m-{uuid.uuid4().hex[:10]}", **fields)
    prompt_publish(
        version=prompt_draft_create(agent=agent, instructions="Be brief.", greeting="", variables={}, change_note="")
    )
    return agent


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
