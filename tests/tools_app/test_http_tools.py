"""HTTP tools against a real local aiohttp server: retries, the Idempotency-Key, timeouts, secrets."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pytest
from livekit.agents.llm import FunctionCall, ToolError

from tests.tools_app import helpers
from tests.tools_app.helpers import LocalToolServer, in_db_thread
from tools_app import executors
from tools_app.agent_tools import agent_tool_build
from tools_app.models import InvocationStatus, ToolDefinition, ToolInvocation
from tools_app.services import tool_invoke


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "BACKOFF_BASE_SECONDS", 0.01)


http_tool = partial(
    helpers.http_tool,
    name="crm_note",
    description="Add a note in the CRM.",
    parameters={"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
)


def call(tool: ToolDefinition, key: str = "k1", note: str = "hello"):
    return tool_invoke(tool=tool, arguments={"note": note}, key=key, scope="test")


@pytest.mark.django_db
class TestHttpTools:
    def test_two_failures_then_success_send_the_same_key_three_times_for_one_effect(self) -> None:
        with LocalToolServer([503, 502, 200]) as server:
            tool = http_tool(server.url, max_retries=2)
            outcome = call(tool)
            replay = call(tool)
        assert outcome.status == InvocationStatus.SUCCEEDED
        assert outcome.result == {"ok": True, "effect": 1}
        assert server.keys() == ["k1", "k1", "k1"]
        assert server.effects == 1 and len(server.requests) == 3  # the replay sent nothing
        assert replay.replayed and replay.result == outcome.result
        assert ToolInvocation.objects.get(key="k1").attempts == 3
        assert json.loads(server.requests[0]["body"]) == {"note": "hello"}

    def test_it_never_retries_a_4xx(self) -> None:
        with LocalToolServer([400, 200]) as server:
            outcome = call(http_tool(server.url, max_retries=3))
        assert outcome.status == InvocationStatus.FAILED
        assert "HTTP 400" in outcome.error and "scripted 400" in outcome.error
        assert len(server.requests) == 1

    def test_retries_stop_at_the_tools_retry_count(self) -> None:
        with LocalToolServer([503]) as server:
            outcome = call(http_tool(server.url, max_retries=1))
        assert outcome.status == InvocationStatus.FAILED
        assert "after 2 attempts" in outcome.error and "HTTP 503" in outcome.error
        assert len(server.requests) == 2

    def test_a_timeout_is_a_clear_failure_and_is_not_retried_for_a_non_idempotent_tool(self) -> None:
        with LocalToolServer([("sleep", 2)]) as server:
            outcome = call(http_tool(server.url, timeout_seconds=0.2, max_retries=2, idempotent=False))
        assert outcome.status == InvocationStatus.FAILED
        assert "no answer within 0.2 s" in outcome.error
        assert "may still have taken effect" in outcome.error
        assert len(server.requests) == 1

    def test_an_idempotent_tool_is_retried_after_a_timeout_with_the_same_key(self) -> None:
        with LocalToolServer([("sleep", 2), 200]) as server:
            outcome = call(http_tool(server.url, timeout_seconds=0.3, max_retries=2, idempotent=True))
        assert outcome.status == InvocationStatus.SUCCEEDED
        assert server.keys() == ["k1", "k1"]

    def test_a_refused_connection_is_retried_and_then_reported(self) -> None:
        outcome = call(http_tool("http://127.0.0.1:9/tool", max_retries=1))
        assert outcome.status == InvocationStatus.FAILED
        assert "could not connect" in outcome.error and "after 2 attempts" in outcome.error

    def test_secret_headers_come_from_the_environment_at_call_time(self, monkeypatch) -> None:
        with LocalToolServer([200]) as server:
            tool = http_tool(
                server.url, http_secret_headers={"Authorization": "TOOL_SECRET_CRM_TOKEN"}, http_headers={"X-Team": "a"}
            )
            monkeypatch.setenv("TOOL_SECRET_CRM_TOKEN", "Bearer s3cret")
            assert call(tool).status == InvocationStatus.SUCCEEDED
        headers = server.requests[0]["headers"]
        assert headers["Authorization"] == "Bearer s3cret" and headers["X-Team"] == "a"
        stored = json.dumps(list(ToolDefinition.objects.values()), default=str)
        assert "s3cret" not in stored

    def test_a_missing_secret_fails_without_sending_anything(self, monkeypatch) -> None:
        monkeypatch.delenv("TOOL_SECRET_CRM_TOKEN", raising=False)
        with LocalToolServer([200]) as server:
            outcome = call(http_tool(server.url, http_secret_headers={"Authorization": "TOOL_SECRET_CRM_TOKEN"}))
        assert outcome.status == InvocationStatus.FAILED and "TOOL_SECRET_CRM_TOKEN" in outcome.error
        assert server.requests == []

    def test_get_tools_send_arguments_as_query_parameters(self) -> None:
        with LocalToolServer([200]) as server:
            call(http_tool(server.url, http_method="GET"), note="status?")
        assert server.requests[0]["query"] == {"note": "status?"}


@pytest.mark.django_db(transaction=True)
async def test_a_timeout_reaches_the_llm_as_a_clear_tool_error(voice_session) -> None:
    with LocalToolServer([("sleep", 2)]) as server:
        tool = await in_db_thread(lambda: http_tool(server.url, timeout_seconds=0.2, max_retries=0))
        records: list[dict] = []
        fn = agent_tool_build(tool=tool, session_id=str(voice_session.pk), on_result=records.append)
        ctx = SimpleNamespace(function_call=FunctionCall(call_id="c1", name="crm_note", arguments="{}"))
        with pytest.raises(ToolError, match=r"The tool 'crm_note' failed after 1 attempt: no answer within 0.2 s"):
            await fn(raw_arguments={"note": "x"}, context=ctx)
    assert records[0]["status"] == "failed" and "no answer" in records[0]["error"]
