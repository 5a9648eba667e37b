"""A spoken request that makes the agent call a DB-configured tool through the ledger."""

from __future__ import annotations

import pytest

from tests.pipeline.conftest import CallDriver, db, event_types, make_session, turns_of, wait_turns

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def _add_place_order(agent) -> None:
    from tools_app.models import ToolDefinition, ToolKind

    tool = ToolDefinition.objects.create(
        name="place_order",
        description="Place an order for food.",
        parameters={
            "type": "object",
            "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "maximum": 20}},
            "required": ["item", "quantity"],
        },
        kind=ToolKind.BUILTIN,
        builtin_name="place_order",
    )
    tool.agents.add(agent)


async def test_a_spoken_order_calls_the_tool_and_the_turn_records_it(agent, prewarmed):
    from tools_app.models import DemoOrder

    await db(_add_place_order, agent)
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)
    await driver.say("I would like to place an order for two pizzas.")
    turns = await wait_turns(session_id, 2)
    await driver.wait_speaking(False)
    await driver.hangup()

    turn = (await db(turns_of, session_id))[1]
    assert [c["name"] for c in turn["tool_calls"]] == ["place_order"], turn
    record = turn["tool_calls"][0]
    assert record["status"] == "succeeded" and record["replayed"] is False
    assert record["key"] == f"{session_id}:{record['call_id']}"
    assert turn["tool_ms"] == pytest.approx(record["latency_ms"])
    assert "place order is done" in turn["generated_text"]
    assert turns[1]["e2e_ms"] is not None
    orders = await db(lambda: list(DemoOrder.objects.values_list("quantity", flat=True)))
    assert orders == [2]
    assert "tool.called" in await db(event_types, session_id)
