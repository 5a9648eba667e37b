"""Issue 17, item 4: HTTP tools and report webhooks cannot reach inside the deployment.

The attacks: a tool (or a client's report webhook) aimed at loopback, a private or
link-local address (a cloud's metadata service), or a public endpoint that redirects
inside, carrying the tool's secret headers along; an endpoint that answers with an
endless body, or keeps asking to retry.
"""

from __future__ import annotations

import pytest

from sessions_app.reports import session_report_deliver
from tests.tools_app.helpers import LocalToolServer
from tools_app.models import InvocationStatus, ToolDefinition
from tools_app.services import tool_invoke
from voiceplatform.outbound import address_allowed

pytestmark = pytest.mark.django_db


def _tool(url: str, **fields) -> ToolDefinition:
    fields.setdefault("max_retries", 0)
    fields.setdefault("name", "crm_note")
    return ToolDefinition.objects.create(description="x", kind="http", http_url=url, **fields)


def _call(tool: ToolDefinition):
    return tool_invoke(tool=tool, arguments={"note": "hi"}, key=f"k-{tool.name}", scope="test")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "fd00::1",
    ],
)
def test_internal_addresses_are_refused_by_default(settings, address) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    assert not address_allowed(address)
    assert address_allowed("93.184.216.34")


def test_a_tool_aimed_at_loopback_sends_nothing(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    with LocalToolServer([200]) as server:
        outcome = _call(_tool(server.url))
        by_name = _call(_tool(server.url.replace("127.0.0.1", "localhost"), name="by_name"))
    assert outcome.status == InvocationStatus.FAILED and "internal address" in outcome.error
    assert by_name.status == InvocationStatus.FAILED and "internal address" in by_name.error
    assert server.requests == [], "the request reached the internal server"


def test_an_admitted_network_is_reachable(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with LocalToolServer([200]) as server:
        assert _call(_tool(server.url)).status == InvocationStatus.SUCCEEDED


def test_a_redirect_is_not_followed_and_the_secret_goes_nowhere_else(settings, monkeypatch) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    monkeypatch.setenv("TOOL_SECRET_CRM_TOKEN", "Bearer s3cret")
    with LocalToolServer([200]) as inside, LocalToolServer([("redirect", inside.url)]) as outside:
        outcome = _call(_tool(outside.url, http_secret_headers={"Authorization": "TOOL_SECRET_CRM_TOKEN"}))
    assert outcome.status == InvocationStatus.FAILED and "not followed" in outcome.error
    assert inside.requests == []


def test_an_endless_answer_is_cut_at_the_cap(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with LocalToolServer([("big", 3 << 20)]) as server:
        outcome = _call(_tool(server.url))
    assert outcome.status == InvocationStatus.FAILED and "larger than" in outcome.error


def test_retries_stop_when_the_calls_total_time_is_spent(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.TOOL_HTTP_TOTAL_SECONDS = 1.0
    with LocalToolServer([("retry-after", 0.4)]) as server:
        outcome = _call(_tool(server.url, max_retries=10))
    assert outcome.status == InvocationStatus.FAILED and "in all" in outcome.error
    assert 1 <= len(server.requests) <= 4, "ten retries asked for, the total time allows a few"


def test_a_report_webhook_aimed_inside_is_refused_without_retries(settings, agent, owner_client) -> None:
    from sessions_app.models import VoiceSession
    from sessions_app.services import api_client_create, session_create, session_transition

    settings.OUTBOUND_ALLOWED_NETWORKS = []
    with LocalToolServer([200]) as receiver:
        client, _ = api_client_create(name="hooked", webhook_url=receiver.url)
        session, _ = session_create(agent_slug=agent.slug, caller_id="u1", api_client=client)
        session_transition(session_id=session.pk, to_state="ended", reason="test")
        VoiceSession.objects.filter(pk=session.pk).update(report={"turns": 0})
        outcome = session_report_deliver(session_id=session.pk)
    assert outcome.status == "failed" and "refused" in outcome.detail
    assert receiver.requests == []
