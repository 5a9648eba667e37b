"""The real `livekit.plugins.openai.LLM` against a local OpenAI-compatible streaming server.

The server speaks the chat-completions streaming protocol (server-sent events), as
Ollama, vLLM or llama.cpp server do. The first request gets a tool call back, the
second (carrying the tool result) gets streamed text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import AgentSession, function_tool

from agents_app.models import Provider
from tests.pipeline.conftest import db, make_session

pytestmark = pytest.mark.django_db(transaction=True)

PLACED: list[dict[str, Any]] = []


@function_tool
async def place_order(item: str, quantity: int) -> str:
    """Place an order for a number of items."""
    PLACED.append({"item": item, "quantity": quantity})
    return f"order 42 placed: {quantity} x {item}"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "local-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if body["messages"][-1]["role"] == "tool":
            for word in ("Your ", "order ", "is ", "placed, ", "number ", "42."):
                await response.write(_chunk({"role": "assistant", "content": word}))
            await response.write(_chunk({}, "stop"))
        else:
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "place_order", "arguments": json.dumps({"item": "pizza", "quantity": 2})},
            }
            await response.write(_chunk({"role": "assistant", "tool_calls": [call]}))
            await response.write(_chunk({}, "tool_calls"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def openai_server():
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield fake, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_the_openai_plugin_streams_a_tool_call_and_the_answer(agent, openai_server, settings):
    from agents_app.runtime.providers.factory import build_provider, primary_spec
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.platform_agent import PlatformAgent
    from agents_app.runtime.worker.recorder import Recorder
    from agents_app.runtime.worker.turns import TurnTracker

    fake, base_url = openai_server
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = base_url

    def use_openai() -> None:
        agent.llm_provider = Provider.OPENAI
        agent.llm_model = "local-test"
        agent.save(update_fields=["llm_provider", "llm_model"])

    await db(use_openai)
    session_id = await db(make_session, agent)
    config = await load_job_config(session_id)
    llm = build_provider("llm", primary_spec("llm", config.agent), config.agent)
    assert type(llm).__module__.startswith("livekit.plugins.openai")  # never the stand-in

    PLACED.clear()
    tracker = TurnTracker(recorder=Recorder(session_id=session_id), next_index=0)
    platform_agent = PlatformAgent(config=config, tracker=tracker, tools=[place_order])
    async with AgentSession(llm=llm, vad=None) as session:
        await session.start(platform_agent)
        result = await session.run(user_input="two pizzas please")
        result.expect.next_event().is_function_call(name="place_order", arguments={"item": "pizza", "quantity": 2})
        result.expect.next_event().is_function_call_output(output="order 42 placed: 2 x pizza")
        message = result.expect.next_event().is_message(role="assistant")
        assert message.event().item.text_content == "Your order is placed, number 42."

    assert PLACED == [{"item": "pizza", "quantity": 2}]
    first, second = fake.requests
    assert first["model"] == "local-test" and first["stream"] is True
    assert first["messages"][0]["content"] == "You are the support agent of Acme. Be brief."
    assert [t["function"]["name"] for t in first["tools"]] == ["place_order"]
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "order 42 placed: 2 x pizza",
    }
