"""The agent's function tools built from admin-defined ToolDefinitions (build_agent_tools)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from livekit.agents.llm import FunctionCall, ToolError
from livekit.agents.llm.tool_context import is_raw_function_tool

from sessions_app.models import SessionEvent
from tests.tools_app.helpers import in_db_thread
from tools_app.agent_tools import build_agent_tools
from tools_app.models import DemoOrder, InvocationStatus, ToolDefinition, ToolInvocation

pytestmark = pytest.mark.django_db(transaction=True)


def run_context(call_id: str, name: str = "place_order", arguments: str = "{}") -> Any:
    # Only `function_call` is read by our tools; livekit builds the real RunContext.
    return SimpleNamespace(function_call=FunctionCall(call_id=call_id, name=name, arguments=arguments))


async def test_it_builds_raw_tools_with_the_definitions_name_description_and_schema(
    agent, place_order_tool, voice_session
) -> None:
    await in_db_thread(
        lambda: ToolDefinition.objects.create(
            name="disabled_tool", description="off", kind="builtin", builtin_name="x", enabled=False
        )
    )
    tools = await build_agent_tools(agent_id=agent.pk, session_id=str(voice_session.pk), on_result=None)
    assert [t.info.name for t in tools] == ["place_order"]
    tool = tools[0]
    assert is_raw_function_tool(tool)
    assert tool.info.raw_schema == {
        "name": "place_order",
        "description": place_order_tool.description,
        "parameters": place_order_tool.parameters,
    }


async def test_a_call_runs_through_the_ledger_once_and_a_retried_call_id_replays(
    agent, place_order_tool, voice_session
) -> None:
    records: list[dict[str, Any]] = []
    (tool,) = await build_agent_tools(agent_id=agent.pk, session_id=str(voice_session.pk), on_result=records.append)
    out = await tool(raw_arguments={"item": "latte", "quantity": 2}, context=run_context("call_1"))
    again = await tool(raw_arguments={"item": "latte", "quantity": 2}, context=run_context("call_1"))
    assert json.loads(out) == json.loads(again)
    assert json.loads(out)["quantity"] == 2
    assert await in_db_thread(lambda: DemoOrder.objects.count()) == 1
    key = f"{voice_session.pk}:call_1"
    row = await in_db_thread(lambda: ToolInvocation.objects.get(scope=str(voice_session.pk), key=key))
    assert (row.status, row.replays, row.attempts) == (InvocationStatus.SUCCEEDED, 1, 1)
    assert [(r["key"], r["status"], r["replayed"]) for r in records] == [
        (key, "succeeded", False),
        (key, "succeeded", True),
    ]
    assert all(r["latency_ms"] is not None and r["name"] == "place_order" for r in records)
    # The agent's recorder appends tool.called from on_result; the ledger must not add a copy.
    assert not await in_db_thread(
        lambda: SessionEvent.objects.filter(session_id=voice_session.pk, type="tool.called").exists()
    )


async def test_invalid_arguments_become_a_tool_error_and_are_recorded_without_running(
    agent, place_order_tool, voice_session
) -> None:
    records: list[dict[str, Any]] = []
    (tool,) = await build_agent_tools(agent_id=agent.pk, session_id=str(voice_session.pk), on_result=records.append)
    with pytest.raises(ToolError, match="quantity"):
        await tool(raw_arguments={"item": "latte", "quantity": 0}, context=run_context("call_bad"))
    assert await in_db_thread(lambda: DemoOrder.objects.count()) == 0
    row = await in_db_thread(lambda: ToolInvocation.objects.get(key=f"{voice_session.pk}:call_bad"))
    assert row.status == InvocationStatus.FAILED
    assert "quantity" in row.error
    assert records[0]["status"] == "failed" and "quantity" in records[0]["error"]


async def test_a_business_error_of_a_builtin_reaches_the_llm_as_tool_error(
    agent, charge_wallet_tool, voice_session
) -> None:
    (tool,) = await build_agent_tools(agent_id=agent.pk, session_id=str(voice_session.pk), on_result=None)
    with pytest.raises(ToolError, match="Not enough money"):
        await tool(raw_arguments={"amount": 150, "reason": "too much"}, context=run_context("c1", "charge_wallet"))
    out = json.loads(
        await tool(raw_arguments={"amount": 30, "reason": "beans"}, context=run_context("c2", "charge_wallet"))
    )
    assert out["balance"] == "70.00"


async def test_a_reused_call_id_with_other_arguments_is_a_tool_error(agent, place_order_tool, voice_session) -> None:
    records: list[dict[str, Any]] = []
    (tool,) = await build_agent_tools(agent_id=agent.pk, session_id=str(voice_session.pk), on_result=records.append)
    await tool(raw_arguments={"item": "latte", "quantity": 1}, context=run_context("same"))
    with pytest.raises(ToolError, match="different request"):
        await tool(raw_arguments={"item": "mocha", "quantity": 1}, context=run_context("same"))
    assert records[-1]["status"] == "rejected"
    assert records[-1]["error"].startswith("idempotency_key_mismatch")
    assert await in_db_thread(lambda: DemoOrder.objects.count()) == 1
