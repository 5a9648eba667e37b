"""Issue 17, item 8: who a tool call is for is asserted by the platform, not chosen by the model.

The attacks: the model (steered by a caller) passes another customer's id in a tool's
arguments; an editor sets an `X-Voice-Caller` header of their own; someone who can reach
the tool's endpoint sends a request "from the platform"; a caller talks the agent into
calling a money tool again and again.
"""

from __future__ import annotations

import json
import uuid
from functools import partial

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agents_app.selectors import prompt_published
from sessions_app.models import ApiScope, VoiceSession
from sessions_app.services import api_client_create
from tests.tools_app import helpers
from tests.tools_app.conftest import make_demo_tool
from tests.tools_app.helpers import LocalToolServer
from tools_app.executors import tool_request_payload
from tools_app.models import DemoCharge, InvocationStatus, ToolDefinition, ToolInvocation
from tools_app.services import tool_invoke
from voiceplatform.signing import signature_verify

pytestmark = pytest.mark.django_db
SIGNING_ENV = "TOOL_SECRET_CRM_SIGNING"
SIGNING_KEY = "crm-signing-key-0123456789abcdef"


@pytest.fixture
def client_session(agent) -> VoiceSession:
    """A session opened by an API client for its caller "alice"."""
    owner, _ = api_client_create(name="shop-app", scope=ApiScope.CLIENT)
    return VoiceSession.objects.create(
        api_client=owner,
        caller_id="alice",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        agent=agent,
        prompt_version=prompt_published(agent=agent),
    )


http_tool = partial(
    helpers.http_tool,
    name="crm_refund",
    description="Refund the caller.",
    parameters={"type": "object", "properties": {"customer": {"type": "string"}}},
)


def verify(request: dict, secret: str = SIGNING_KEY) -> bool:
    """What the tool's endpoint does with what it received (docs/tools.md)."""
    payload = tool_request_payload(
        method=request["method"], query=request["raw_query"], headers=request["headers"], body=request["raw_body"]
    )
    return signature_verify(secret=secret, header=request["headers"].get("X-Voice-Signature", ""), payload=payload)


def test_every_http_call_says_which_session_caller_and_agent_it_is_for(client_session, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY)
    with LocalToolServer([200]) as server:
        tool = http_tool(server.url, http_signing_secret=SIGNING_ENV)
        outcome = tool_invoke(
            tool=tool,
            # The model claims another customer: the arguments are its choice, the headers are not.
            arguments={"customer": "client-9:bob"},
            key="k1",
            scope=str(client_session.pk),
            session_id=str(client_session.pk),
        )
    assert outcome.status == InvocationStatus.SUCCEEDED, outcome.error
    request = server.requests[0]
    headers = request["headers"]
    assert headers["X-Voice-Session"] == str(client_session.pk)
    assert headers["X-Voice-Caller"] == f"client-{client_session.api_client_id}:alice"
    assert headers["X-Voice-Agent"] == "support"
    assert verify(request)
    assert json.loads(request["body"]) == {"customer": "client-9:bob"}


def test_a_retried_signed_call_sends_the_same_body_signed_again(client_session, monkeypatch) -> None:
    """A 503 then a 200: the second attempt carries the request body and a signature over it
    (not over the first attempt's response)."""
    monkeypatch.setattr("tools_app.executors.BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY)
    with LocalToolServer([503, 200]) as server:
        tool = http_tool(server.url, http_signing_secret=SIGNING_ENV, max_retries=1)
        outcome = tool_invoke(
            tool=tool, arguments={"customer": "x"}, key="k1", scope="s", session_id=str(client_session.pk)
        )
    assert outcome.status == InvocationStatus.SUCCEEDED, outcome.error
    assert len(server.requests) == 2
    assert server.requests[0]["raw_body"] == server.requests[1]["raw_body"]
    assert all(verify(request) for request in server.requests)


def test_a_forged_or_altered_request_does_not_verify(client_session, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY)
    with LocalToolServer([200]) as server:
        tool = http_tool(server.url, http_signing_secret=SIGNING_ENV)
        tool_invoke(tool=tool, arguments={"customer": "x"}, key="k1", scope="s", session_id=str(client_session.pk))
    request = server.requests[0]
    other_caller = {**request, "headers": {**request["headers"], "X-Voice-Caller": "client-9:bob"}}
    other_body = {**request, "raw_body": request["raw_body"].replace(b'"x"', b'"y"')}
    other_key = {**request, "headers": {**request["headers"], "Idempotency-Key": "k2"}}
    assert verify(request)
    assert not verify(other_caller) and not verify(other_body) and not verify(other_key)
    assert not verify(request, secret="a-guess-at-the-key")


def test_a_get_tools_query_is_signed_as_sent(client_session, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY)
    with LocalToolServer([200]) as server:
        tool = http_tool(f"{server.url}?v=2", http_method="GET", http_signing_secret=SIGNING_ENV)
        tool_invoke(
            tool=tool,
            arguments={"customer": "ä b&c"},
            key="k1",
            scope="s",
            session_id=str(client_session.pk),
        )
    request = server.requests[0]
    assert request["query"] == {"v": "2", "customer": "ä b&c"}
    assert verify(request)
    assert not verify({**request, "raw_query": "v=2&customer=someone-else"})


def test_without_a_session_no_identity_is_claimed(monkeypatch) -> None:
    with LocalToolServer([200]) as server:
        tool = http_tool(server.url)
        tool_invoke(tool=tool, arguments={"customer": "x"}, key="k1", scope="s")
    assert not any(h.startswith("X-Voice-") for h in server.requests[0]["headers"])


def test_a_missing_signing_secret_sends_nothing(client_session, monkeypatch) -> None:
    monkeypatch.delenv(SIGNING_ENV, raising=False)
    with LocalToolServer([200]) as server:
        tool = http_tool(server.url, http_signing_secret=SIGNING_ENV)
        outcome = tool_invoke(tool=tool, arguments={}, key="k1", scope="s", session_id=str(client_session.pk))
    assert outcome.status == InvocationStatus.FAILED and SIGNING_ENV in outcome.error
    assert server.requests == []


def test_a_tool_cannot_set_the_identity_headers_itself(client_session) -> None:
    with pytest.raises(ValidationError, match="set by the platform"):
        http_tool("https://crm.example.com", http_headers={"X-Voice-Caller": "client-9:bob"})
    with pytest.raises(ValidationError, match="set by the platform"):
        http_tool("https://crm.example.com", http_secret_headers={"Idempotency-Key": "TOOL_SECRET_X"})
    # A row written around the admin: the platform's value is the one sent.
    with LocalToolServer([200]) as server:
        tool = ToolDefinition.objects.create(
            name="crm_refund",
            description="x",
            kind="http",
            http_url=server.url,
            http_headers={"x-voice-caller": "client-9:bob", "X-Voice-Signature": "t=1,v1=00"},
        )
        tool_invoke(tool=tool, arguments={}, key="k1", scope="s", session_id=str(client_session.pk))
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers["x-voice-caller"] == f"client-{client_session.api_client_id}:alice"
    assert "x-voice-signature" not in headers


def test_an_editor_cannot_set_or_change_the_signing_secret(editor) -> None:
    tool = ToolDefinition.objects.create(
        name="crm_refund",
        description="x",
        kind="http",
        http_url="https://crm.example.com",
        http_signing_secret=SIGNING_ENV,
    )
    page = editor.get(reverse("admin:tools_app_tooldefinition_change", args=[tool.pk])).content.decode()
    assert 'name="http_signing_secret"' not in page


# --- max_calls_per_session ------------------------------------------------------------------


def test_a_capped_tool_runs_at_most_n_times_per_session_and_retries_still_replay(agent, client_session) -> None:
    tool = make_demo_tool("charge_wallet", agent)
    tool.max_calls_per_session = 1
    tool.save()
    sid = str(client_session.pk)

    def charge(key: str, scope: str = sid) -> object:
        return tool_invoke(tool=tool, arguments={"amount": 5, "reason": "tea"}, key=key, scope=scope, session_id=sid)

    first = charge("k1")
    second = charge("k2")
    again = charge("k1")  # the first call's retry
    by_api_key = charge("k3", scope=f"{sid}:client-7")  # another caller of the tool, same session
    assert first.status == InvocationStatus.SUCCEEDED
    assert second.status == InvocationStatus.FAILED and "at most once" in second.error
    assert again.replayed and again.status == InvocationStatus.SUCCEEDED
    assert by_api_key.status == InvocationStatus.FAILED
    assert DemoCharge.objects.count() == 1
    assert charge("k2").replayed, "the refusal is stored and replayed like any outcome"


def test_failed_calls_do_not_use_up_the_cap(agent, client_session) -> None:
    tool = make_demo_tool("charge_wallet", agent)
    tool.max_calls_per_session = 1
    tool.save()
    sid = str(client_session.pk)
    refused = tool_invoke(tool=tool, arguments={"amount": -1, "reason": "tea"}, key="k1", scope=sid, session_id=sid)
    charged = tool_invoke(tool=tool, arguments={"amount": 5, "reason": "tea"}, key="k2", scope=sid, session_id=sid)
    assert refused.status == InvocationStatus.FAILED and charged.status == InvocationStatus.SUCCEEDED


def test_the_cap_counts_per_session(agent, client_session) -> None:
    tool = make_demo_tool("place_order", agent)
    tool.max_calls_per_session = 1
    tool.save()
    other = VoiceSession.objects.create(
        caller_id="bob",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        agent=agent,
        prompt_version=prompt_published(agent=agent),
    )
    for session in (client_session, other):
        sid = str(session.pk)
        outcome = tool_invoke(tool=tool, arguments={"item": "tea", "quantity": 1}, key="k", scope=sid, session_id=sid)
        assert outcome.status == InvocationStatus.SUCCEEDED
    assert ToolInvocation.objects.filter(status=InvocationStatus.SUCCEEDED).count() == 2
