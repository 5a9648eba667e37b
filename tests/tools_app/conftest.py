"""Fixtures for tools_app: the demo tools as seed_demo defines them, and a voice session."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agents_app.models import Agent
from agents_app.runtime.management.commands.seed_demo import DEMO_TOOLS
from agents_app.selectors import prompt_published
from sessions_app.models import VoiceSession
from tools_app.models import ToolDefinition, ToolKind


def demo_tool_spec(name: str) -> dict[str, Any]:
    return next(dict(spec) for spec in DEMO_TOOLS if spec["name"] == name)


def make_demo_tool(demo_name: str, agent: Agent | None = None, **overrides: Any) -> ToolDefinition:
    spec = {**demo_tool_spec(demo_name), **overrides}
    tool = ToolDefinition(**{"kind": ToolKind.BUILTIN, "builtin_name": demo_name, **spec})
    tool.full_clean()
    tool.save()
    if agent is not None:
        tool.agents.add(agent)
    return tool


def make_session(agent: Agent, caller_id: str = "caller-1") -> VoiceSession:
    return VoiceSession.objects.create(
        caller_id=caller_id,
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        agent=agent,
        prompt_version=prompt_published(agent=agent),
    )


@pytest.fixture
def place_order_tool(agent: Agent) -> ToolDefinition:
    return make_demo_tool("place_order", agent)


@pytest.fixture
def charge_wallet_tool(agent: Agent) -> ToolDefinition:
    """The demo's charge_wallet, without its wait for the caller's yes (that step has its
    own tests: test_tool_confirmation.py)."""
    return make_demo_tool("charge_wallet", agent, requires_confirmation=False)


@pytest.fixture
def voice_session(agent: Agent) -> VoiceSession:
    return make_session(agent)


@pytest.fixture
def agent_key(agent_scope_client, agent: Agent) -> str:
    """An agent-scope API key that serves `agent` (ApiClient.agents, issue 17 item 5)."""
    agent_scope_client[0].agents.add(agent)
    return agent_scope_client[1]


@pytest.fixture(autouse=True)
def _close_pool_thread_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's tools use Django connections in pool threads, kept for CONN_MAX_AGE in
    production. In tests, close them after each call so the test database can be dropped."""
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)


@pytest.fixture(autouse=True)
def _loopback_outbound(settings):
    """The tools of these tests listen on 127.0.0.1, which the platform refuses by default
    (voiceplatform/outbound.py): admit loopback, as an operator would for local tools."""
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
