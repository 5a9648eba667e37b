"""50 concurrent identical invocations through the API: exactly one effect (PostgreSQL).

Two paths: an atomic built-in (claim, effect and outcome in one transaction: duplicates
wait and replay) and an HTTP tool (claim committed first: duplicates get 409 while it
runs, the replay after).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client

from tests.threads import run_at_once
from tests.tools_app.helpers import LocalToolServer
from tools_app.models import DemoOrder, ToolDefinition, ToolInvocation

CALLERS = 50


def invoke_concurrently(api_key: str, tool_name: str, body: dict[str, Any]) -> list[tuple[int, dict]]:
    def caller(n: int) -> tuple[int, dict]:
        response = Client().post(
            f"/api/v1/tools/{tool_name}/invoke",
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "the-same-key"},
        )
        return response.status_code, response.json()

    return run_at_once(caller, CALLERS)


def check_responses(responses: list[tuple[int, dict]]) -> tuple[list, list, list]:
    assert len(responses) == CALLERS
    originals = [b for code, b in responses if code == 200 and not b["replayed"]]
    replays = [b for code, b in responses if code == 200 and b["replayed"]]
    conflicts = [b for code, b in responses if code == 409]
    print(f"originals={len(originals)} replays={len(replays)} conflicts={len(conflicts)}")
    assert len(originals) == 1
    assert len(originals) + len(replays) + len(conflicts) == CALLERS
    assert all(b["code"] == "idempotency_key_in_use" for b in conflicts)
    assert all(b["result"] == originals[0]["result"] for b in replays)
    return originals, replays, conflicts


@pytest.fixture(autouse=True)
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises the whole file); CI runs on PostgreSQL")


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_identical_builtin_invocations_run_it_exactly_once(
    agent_key, place_order_tool, voice_session
) -> None:
    body = {"session_id": str(voice_session.pk), "arguments": {"item": "espresso", "quantity": 1}}
    responses = invoke_concurrently(agent_key, "place_order", body)
    _, replays, _ = check_responses(responses)
    assert DemoOrder.objects.count() == 1
    row = ToolInvocation.objects.get()
    assert row.attempts == 1 and row.replays == len(replays)


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_identical_http_invocations_reach_the_server_once(agent_key, voice_session) -> None:
    with LocalToolServer([("sleep", 0.5)]) as server:
        tool = ToolDefinition(name="crm_note", description="note", kind="http", http_url=server.url, timeout_seconds=10)
        tool.full_clean()
        tool.save()
        tool.agents.add(voice_session.agent)
        body = {"session_id": str(voice_session.pk), "arguments": {"note": "hi"}}
        responses = invoke_concurrently(agent_key, "crm_note", body)
    check_responses(responses)
    assert server.effects == 1 and len(server.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_a_cap_of_two_holds_for_twenty_different_calls_at_once(place_order_tool, voice_session, monkeypatch) -> None:
    """Issue 17, item 8: `max_calls_per_session` under concurrency (the session row lock).

    The count is slowed down (50 ms after it, inside the claim's transaction) so that
    without the lock every caller would count before any commits, and all would pass.
    """
    import time

    from tools_app import claims
    from tools_app.models import InvocationStatus
    from tools_app.services import tool_invoke

    counted = claims.cap_problem

    def slow_count(**kwargs: Any) -> str:
        problem = counted(**kwargs)
        time.sleep(0.05)
        return problem

    monkeypatch.setattr(claims, "cap_problem", slow_count)

    place_order_tool.max_calls_per_session = 2
    place_order_tool.save()
    sid = str(voice_session.pk)

    def caller(n: int) -> str:
        outcome = tool_invoke(
            tool=place_order_tool, arguments={"item": "tea", "quantity": 1}, key=f"k{n}", scope=sid, session_id=sid
        )
        return outcome.status

    statuses = run_at_once(caller, 20)
    assert sorted(statuses).count(InvocationStatus.SUCCEEDED) == 2 and len(statuses) == 20
    assert DemoOrder.objects.count() == 2
