"""POST /api/v1/tools/{name}/invoke: auth, status codes and replay over HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from sessions_app.models import ApiScope
from tools_app.ledger import request_fingerprint
from tools_app.models import DemoOrder, ToolInvocation

URL = "/api/v1/tools/place_order/invoke"
ORDER = {"item": "latte", "quantity": 2}

pytestmark = pytest.mark.django_db


def post(key: str | None, *, api_key: str | None, body: dict | None = None, url: str = URL):
    """POST an invocation; the default body belongs to the test's live session (see `_bound`)."""
    headers = {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if key is not None:
        headers["Idempotency-Key"] = key
    if body is None:
        body = with_session(_session())
    return Client().post(url, body, content_type="application/json", headers=headers)


_SESSION: dict[str, object] = {}


def _session():
    """The current test's live session (every test here calls within one)."""
    return _SESSION["session"]


@pytest.fixture(autouse=True)
def _bound(voice_session) -> None:
    _SESSION["session"] = voice_session


def with_session(session, arguments: dict | None = None) -> dict:
    return {"session_id": str(session.pk), "arguments": ORDER if arguments is None else arguments}


def test_it_invokes_once_and_replays_the_stored_outcome(
    agent_key, agent_scope_client, place_order_tool, voice_session
) -> None:
    body = with_session(voice_session)
    first = post("order-1", api_key=agent_key, body=body)
    second = post("order-1", api_key=agent_key, body=body)
    assert first.status_code == 200, first.content
    assert first.json()["status"] == "succeeded" and first.json()["replayed"] is False
    assert first.json()["result"]["quantity"] == 2
    assert second.status_code == 200 and second.json()["replayed"] is True
    assert second.json()["result"] == first.json()["result"]
    assert DemoOrder.objects.count() == 1
    assert ToolInvocation.objects.get().scope == f"{voice_session.pk}:client-{agent_scope_client[0].pk}"


def test_a_mismatched_replay_is_422(agent_key, place_order_tool) -> None:
    post("k", api_key=agent_key)
    response = post("k", api_key=agent_key, body=with_session(_session(), {"item": "mocha", "quantity": 2}))
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_mismatch"
    assert DemoOrder.objects.count() == 1


def test_a_missing_key_is_400(agent_key, place_order_tool) -> None:
    response = post(None, api_key=agent_key)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_missing"
    assert not DemoOrder.objects.exists()


def test_a_key_still_running_is_409(agent_key, agent_scope_client, place_order_tool, voice_session) -> None:
    ToolInvocation.objects.create(
        scope=f"{voice_session.pk}:client-{agent_scope_client[0].pk}",
        key="k",
        tool=place_order_tool,
        tool_name="place_order",
        fingerprint=request_fingerprint(tool_name="place_order", arguments=ORDER),
        arguments=ORDER,
        attempts=1,
        claim_token="other",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    response = post("k", api_key=agent_key)
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"


def test_a_client_scope_key_is_403(owner_client, place_order_tool) -> None:
    response = post("k", api_key=owner_client[1])
    assert response.status_code == 403
    assert not ToolInvocation.objects.exists()


def test_no_key_is_401(place_order_tool) -> None:
    assert post("k", api_key=None).status_code == 401


def test_an_unknown_or_disabled_tool_is_404(agent_key, place_order_tool) -> None:
    assert post("k", api_key=agent_key, url="/api/v1/tools/nope/invoke").status_code == 404
    place_order_tool.enabled = False
    place_order_tool.save()
    response = post("k", api_key=agent_key)
    assert response.status_code == 404 and response.json()["code"] == "tool_not_found"


def test_an_unknown_session_is_404(agent_key, place_order_tool) -> None:
    response = post(
        "k", api_key=agent_key, body={"session_id": "6f1c1d2e-0000-4000-8000-000000000000", "arguments": ORDER}
    )
    assert response.status_code == 404 and response.json()["code"] == "session_not_found"


def test_invalid_arguments_are_a_recorded_failure(agent_key, place_order_tool) -> None:
    response = post("k", api_key=agent_key, body=with_session(_session(), {"item": "latte", "quantity": "two"}))
    assert response.status_code == 200
    assert response.json()["status"] == "failed" and "quantity" in response.json()["error"]
    assert ToolInvocation.objects.get().status == "failed"
    assert not DemoOrder.objects.exists()


def test_nul_bytes_in_a_tool_name_or_its_arguments_get_a_4xx_not_a_500(agent_key, place_order_tool) -> None:
    """Issue 17, item 15: PostgreSQL refuses NUL in text and jsonb; the API answers first."""
    named = post("k-nul-name", api_key=agent_key, url=URL.replace("place_order", "place%00order"))
    assert named.status_code == 404 and named.json()["code"] == "tool_not_found"
    argued = post(
        "k-nul-args", api_key=agent_key, body=with_session(_session(), {"item": "cof\u0000fee", "quantity": 1})
    )
    assert argued.status_code == 422 and argued.json()["code"] == "invalid_arguments"
    assert "NUL" in argued.json()["message"]


def test_tool_invocations_are_limited_per_key(agent_key, place_order_tool, settings) -> None:
    """Issue 17, item 10: a key flooding tool calls gets 429 with Retry-After."""
    settings.TOOL_INVOKE_RATE_PER_MINUTE = 2
    codes = [post(f"k-rate-{n}", api_key=agent_key).status_code for n in range(3)]
    assert codes == [200, 200, 429]


# --- Issue 17, item 5: an agent key acts only within its agents' live sessions -----------


def test_a_missing_session_id_is_422(agent_key, place_order_tool) -> None:
    response = post("k", api_key=agent_key, body={"arguments": ORDER})
    assert response.status_code == 422 and response.json()["code"] == "session_required"
    assert not ToolInvocation.objects.exists()


def test_a_key_not_bound_to_the_sessions_agent_gets_404(agent_scope_client, place_order_tool, voice_session) -> None:
    """The key is valid and agent-scoped, but serves no agent: the session does not exist for it."""
    response = post("k", api_key=agent_scope_client[1])
    assert response.status_code == 404 and response.json()["code"] == "session_not_found"
    assert not DemoOrder.objects.exists()


def test_a_key_bound_to_another_agent_gets_404(agent_scope_client, place_order_tool, voice_session) -> None:
    from agents_app.models import Agent

    other = Agent.objects.create(slug="sales", name="Sales agent")
    agent_scope_client[0].agents.add(other)
    response = post("k", api_key=agent_scope_client[1])
    assert response.status_code == 404 and response.json()["code"] == "session_not_found"
    assert not DemoOrder.objects.exists()


def test_a_tool_not_attached_to_the_sessions_agent_is_404(agent_key, place_order_tool) -> None:
    place_order_tool.agents.clear()
    response = post("k", api_key=agent_key)
    assert response.status_code == 404 and response.json()["code"] == "tool_not_found"
    assert not DemoOrder.objects.exists()


def test_an_ended_session_is_409(agent_key, place_order_tool, voice_session) -> None:
    voice_session.state = "ended"
    voice_session.save(update_fields=["state"])
    response = post("k", api_key=agent_key)
    assert response.status_code == 409 and response.json()["code"] == "session_final"
    assert not DemoOrder.objects.exists()


def test_another_key_never_replays_a_keys_outcome(agent_key, agent, place_order_tool) -> None:
    """Ledgers are per (client, session): the same Idempotency-Key from a second agent key
    runs its own call instead of reading the first key's stored result."""
    from sessions_app.services import api_client_create

    first = post("shared", api_key=agent_key)
    other_client, other_key = api_client_create(name="other-agent", scope=ApiScope.AGENT)
    other_client.agents.add(agent)
    second = post("shared", api_key=other_key)
    assert first.status_code == second.status_code == 200
    assert second.json()["replayed"] is False
    assert ToolInvocation.objects.count() == 2 and DemoOrder.objects.count() == 2
