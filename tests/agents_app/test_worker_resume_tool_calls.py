"""A resumed job shows its model the session's tool calls, an interrupted one as such.

A job that died while a tool call was running leaves the ledger row `running`; the new job
makes new call ids, so without this its model would take the caller's "did it go
through?" as a new request and make the call again.
"""

from __future__ import annotations

import datetime as dt

import pytest
from livekit.agents.llm import ChatMessage, FunctionCall, FunctionCallOutput

from agents_app.runtime.worker.config import load_job_config
from agents_app.runtime.worker.platform_agent import INTERRUPTED_TOOL_CALL, restored_chat_context
from sessions_app.models import Turn
from tests.factories import make_voice_session
from tests.pipeline.conftest import _close_async_orm_connections, db  # noqa: F401 (autouse: closes the async ORM connection)
from tools_app.models import ToolInvocation

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _session_with_history(agent) -> str:
    session = make_voice_session(agent, caller_id="c1")

    def turn(index: int, user: str, agent_text: str, seconds: int) -> None:
        row = Turn.objects.create(session=session, index=index, user_text=user, generated_text=agent_text)
        Turn.objects.filter(pk=row.pk).update(created_at=T0 + dt.timedelta(seconds=seconds))

    def call(key: str, name: str, arguments: dict, status: str, seconds: int, **fields) -> None:
        row = ToolInvocation.objects.create(
            scope=str(session.pk), key=key, session=session, tool_name=name, fingerprint=key,
            arguments=arguments, status=status, **fields,
        )  # fmt: skip
        ToolInvocation.objects.filter(pk=row.pk).update(created_at=T0 + dt.timedelta(seconds=seconds))

    turn(0, "", "Hello, how can I help?", 1)
    call("k1", "place_order", {"item": "tea", "quantity": 2}, "succeeded", 8, result={"order_id": 7})
    turn(1, "Two teas please.", "Done, your order number is 7.", 10)
    # The job died in the next turn, while charging the wallet: that turn was never stored.
    call("k2", "charge_wallet", {"amount": 5}, "running", 15)
    return str(session.pk)


async def test_the_restored_context_has_the_ledger_calls_where_they_happened(agent):
    session_id = await db(_session_with_history, agent)
    config = await load_job_config(session_id)
    assert config.resumed and [c.name for c in config.tool_calls] == ["place_order", "charge_wallet"]

    items = restored_chat_context(config).items
    shape = [
        (type(i).__name__, getattr(i, "role", None) or getattr(i, "name", ""))
        for i in items
    ]  # fmt: skip
    assert shape == [
        ("ChatMessage", "assistant"),
        ("ChatMessage", "user"),
        ("FunctionCall", "place_order"),
        ("FunctionCallOutput", "place_order"),
        ("ChatMessage", "assistant"),
        ("FunctionCall", "charge_wallet"),
        ("FunctionCallOutput", "charge_wallet"),
    ]
    done, interrupted = [i for i in items if isinstance(i, FunctionCallOutput)]
    assert done.output == '{"order_id": 7}' and not done.is_error
    assert interrupted.output == INTERRUPTED_TOOL_CALL and interrupted.is_error
    calls = [i for i in items if isinstance(i, FunctionCall)]
    assert [c.arguments for c in calls] == ['{"item": "tea", "quantity": 2}', '{"amount": 5}']
    assert {c.call_id for c in calls} == {o.call_id for o in (done, interrupted)}

    # What an OpenAI-compatible model receives: the calls as tool calls and tool answers.
    messages, _ = restored_chat_context(config).to_provider_format("openai")
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant", "tool", "assistant", "assistant", "tool"]
    assert messages[-1]["content"] == INTERRUPTED_TOOL_CALL


async def test_a_fresh_session_loads_no_tool_calls(agent):
    session_id = await db(lambda: str(make_voice_session(agent, caller_id="c2").pk))
    config = await load_job_config(session_id)
    assert not config.resumed and config.tool_calls == []
    assert [i for i in restored_chat_context(config).items if not isinstance(i, ChatMessage)] == []
