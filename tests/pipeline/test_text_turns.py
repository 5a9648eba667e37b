"""Text-mode turns (`session.run(...).expect`) against the platform agent built from the DB."""

from __future__ import annotations

import json

import pytest
from livekit.agents import AgentSession, function_tool
from livekit.agents.llm import ChatMessage

from agents_app.runtime.providers.offline_llm import OfflineStandInLLM
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.turns import turn_record
from tests.pipeline.conftest import db, make_session

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS: list[dict] = []


@function_tool
async def place_order(item: str, quantity: int) -> str:
    """Place an order for a number of items."""
    ORDERS.append({"item": item, "quantity": quantity})
    return f"order placed for {quantity}"


async def _platform_agent(session_id: str, tools: list | None = None):
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.platform_agent import PlatformAgent
    from agents_app.runtime.worker.recorder import Recorder
    from agents_app.runtime.worker.turns import TurnTracker

    config = await load_job_config(session_id)
    tracker = TurnTracker(recorder=Recorder(session_id=session_id), next_index=config.next_turn_index)
    return PlatformAgent(config=config, tracker=tracker, tools=tools or []), config


async def test_it_answers_from_the_sessions_pinned_prompt_and_metadata(agent):
    session_id = await db(make_session, agent, company="Globex")
    llm = OfflineStandInLLM()
    platform_agent, config = await _platform_agent(session_id)
    assert config.instructions == "You are the support agent of Globex. Be brief."
    async with AgentSession(llm=llm, vad=None) as session:
        await session.start(platform_agent)
        result = await session.run(user_input="hello there")
        result.expect.next_event().is_message(role="assistant")
        reply = result.expect[-1].event().item.text_content
    assert "Globex" in reply and "hello there" in reply


async def test_a_published_prompt_edit_changes_the_next_calls(agent):
    def publish_new() -> None:
        version = prompt_draft_create(
            agent=agent, instructions="You answer calls for Initech.", greeting="Hi, Initech here."
        )
        prompt_publish(version=version)

    await db(publish_new)
    session_id = await db(make_session, agent)
    platform_agent, config = await _platform_agent(session_id)
    assert config.greeting == "Hi, Initech here."
    async with AgentSession(llm=OfflineStandInLLM(), vad=None) as session:
        await session.start(platform_agent)
        result = await session.run(user_input="who am I talking to")
        reply = result.expect[-1].event().item.text_content
    assert "Initech" in reply and "Acme" not in reply


async def test_it_calls_a_tool_the_caller_mentions_and_reports_its_result(agent):
    ORDERS.clear()
    session_id = await db(make_session, agent)
    platform_agent, _ = await _platform_agent(session_id, tools=[place_order])
    async with AgentSession(llm=OfflineStandInLLM(), vad=None) as session:
        await session.start(platform_agent)
        result = await session.run(user_input="I want to place an order for two pizzas")
        call = result.expect.next_event().is_function_call(name="place_order")
        assert json.loads(call.event().item.arguments)["quantity"] == 2
        result.expect.next_event().is_function_call_output()
        message = result.expect.next_event().is_message(role="assistant")
        assert "order placed for 2" in message.event().item.text_content
    assert ORDERS == [{"item": "I want to place an order for two pizzas", "quantity": 2}]


async def test_it_does_not_call_tools_the_caller_did_not_mention(agent):
    ORDERS.clear()
    session_id = await db(make_session, agent)
    platform_agent, _ = await _platform_agent(session_id, tools=[place_order])
    async with AgentSession(llm=OfflineStandInLLM(), vad=None) as session:
        await session.start(platform_agent)
        result = await session.run(user_input="what are your opening hours")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
    assert ORDERS == []


async def test_it_rebuilds_the_context_from_stored_turns_with_heard_text(agent):
    session_id = await db(make_session, agent)

    def store() -> None:
        turn_record(session_id=session_id, data={"index": 0, "generated_text": "Hello, this is Acme support."})
        turn_record(
            session_id=session_id,
            data={
                "index": 1,
                "user_text": "tell me everything about delivery",
                "generated_text": "Deliveries come daily. SECRET never heard.",
                "heard_text": "Deliveries come daily.",
                "interrupted": True,
                "interrupt_source": "vad",
            },
        )

    await db(store)
    llm = OfflineStandInLLM()
    platform_agent, config = await _platform_agent(session_id)
    assert config.resumed and config.next_turn_index == 2
    async with AgentSession(llm=llm, vad=None) as session:
        await session.start(platform_agent)
        await session.run(user_input="and on sundays")
    seen = [(i.role, i.text_content) for i in llm.requests[-1].items if isinstance(i, ChatMessage)]
    assert ("assistant", "Hello, this is Acme support.") in seen
    assert ("user", "tell me everything about delivery") in seen
    assert ("assistant", "Deliveries come daily.") in seen
    assert not any("SECRET" in (text or "") for _, text in seen)
