"""Typed input (issue 17, item 8): off unless the agent allows it; cut and answered when on.

The room side (lk.chat from the linked caller only, stored as a turn) runs against a real
LiveKit server in tests/livekit/test_call_lifecycle.py.
"""

from __future__ import annotations

import pytest
from livekit.agents import AgentSession
from livekit.agents.voice import room_io

from agents_app.runtime.providers.offline_llm import OfflineStandInLLM
from tests.pipeline.conftest import db, make_session, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def _options(session_id: str) -> room_io.RoomOptions:
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.platform_agent import room_options

    config = await load_job_config(session_id)
    return room_options(config)


async def test_typed_input_is_off_unless_the_agent_allows_it(agent):
    session_id = await db(make_session, agent)
    assert (await _options(session_id)).get_text_input_options() is None

    agent.text_input = True
    await db(agent.save, update_fields=["text_input"])
    options = (await _options(session_id)).get_text_input_options()
    assert options is not None
    from agents_app.runtime.worker.platform_agent import typed_text_input

    assert options.text_input_cb is typed_text_input


async def test_the_caller_audio_reaches_the_agent_in_short_frames(agent, settings):
    """ROOM_AUDIO_INPUT_FRAME_MS (20 ms) instead of livekit-agents' 50 (docs/latency.md)."""
    session_id = await db(make_session, agent)
    assert (await _options(session_id)).get_audio_input_options().frame_size_ms == 20
    settings.ROOM_AUDIO_INPUT_FRAME_MS = 10
    assert (await _options(session_id)).get_audio_input_options().frame_size_ms == 10


def _user_texts(session: AgentSession) -> list[str]:
    return [item.text_content or "" for item in session.history.items if getattr(item, "role", "") == "user"]


def _answered(session: AgentSession) -> bool:
    """A user message, then an assistant message after it (not just the greeting)."""
    roles = [getattr(item, "role", "") for item in session.history.items]
    return "user" in roles and "assistant" in roles[len(roles) - roles[::-1].index("user") :]


async def test_a_typed_message_is_cut_and_answered_and_a_blank_one_is_dropped(agent, settings):
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.platform_agent import PlatformAgent, typed_text_input
    from agents_app.runtime.worker.recorder import Recorder
    from agents_app.runtime.worker.turns import TurnTracker

    settings.TEXT_INPUT_MAX_CHARS = 40
    session_id = await db(make_session, agent)
    config = await load_job_config(session_id)
    tracker = TurnTracker(recorder=Recorder(session_id=session_id), next_index=config.next_turn_index)
    async with AgentSession(llm=OfflineStandInLLM(), vad=None) as session:
        await session.start(PlatformAgent(config=config, tracker=tracker, tools=[]))
        await typed_text_input(session, room_io.TextInputEvent(text="   \n  "))
        await typed_text_input(session, room_io.TextInputEvent(text="  hello from the keyboard " + "x" * 500))
        await wait_until(lambda: _answered(session), timeout=20)
        typed = _user_texts(session)
    assert typed == [("hello from the keyboard " + "x" * 500)[:40]]
