"""50 concurrent identical invocations through the API: exactly one effect (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client

from tools_app.models import DemoOrder, ToolInvocation

CALLERS = 50


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_identical_invocations_run_the_tool_exactly_once(
    agent_scope_client, place_order_tool, voice_session
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises the whole file); CI runs on PostgreSQL")
    api_key = agent_scope_client[1]
    body = {"session_id": str(voice_session.pk), "arguments": {"item": "espresso", "quantity": 1}}
    start = threading.Barrier(CALLERS)
    responses: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            start.wait(30)
            response = Client().post(
                "/api/v1/tools/place_order/invoke",
                body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "the-same-key"},
            )
            with lock:
                responses.append((response.status_code, response.json()))
        finally:
            connection.close()  # each thread had its own connection

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert len(responses) == CALLERS
    assert DemoOrder.objects.count() == 1
    originals = [b for code, b in responses if code == 200 and not b["replayed"]]
    replays = [b for code, b in responses if code == 200 and b["replayed"]]
    conflicts = [b for code, b in responses if code == 409]
    print(f"originals={len(originals)} replays={len(replays)} conflicts={len(conflicts)}")
    assert len(originals) == 1
    assert len(originals) + len(replays) + len(conflicts) == CALLERS
    assert all(b["code"] == "idempotency_key_in_use" for b in conflicts)
    assert all(b["result"] == originals[0]["result"] for b in replays)
    row = ToolInvocation.objects.get()
    assert row.attempts == 1 and row.replays == len(replays)
