"""`manage.py doctor` (voiceplatform/doctor/): each check names a broken piece and what to do.

The whole command against a running platform, healthy and with Redis gone, is in
tests/e2e/test_simulated_calls.py; against a real LiveKit server (probe, webhooks, a
wrong secret) in tests/livekit/test_doctor.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.management import call_command

from agents_app.models import Agent, Provider
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.models import LiveKitWebhookEvent
from tests.ports import free_port
from tools_app.models import ToolDefinition, ToolKind
from voiceplatform.doctor import agents, infrastructure, transport
from voiceplatform.doctor.base import Check

pytestmark = pytest.mark.django_db


def _named(checks: list[Check], name: str) -> Check:
    matches = [c for c in checks if c.name == name]
    assert matches, f"no check named {name!r} in {[c.name for c in checks]}"
    return matches[0]


def test_an_active_agent_without_a_published_prompt_fails_with_what_to_do(agent: Agent) -> None:
    assert [c.status for c in agents.check_prompts()] == ["ok"]

    draft_only = Agent.objects.create(slug="drafty", name="Only a draft")
    draft = prompt_draft_create(agent=draft_only, instructions="Be brief.", greeting="", variables={}, change_note="")
    Agent.objects.create(slug="retired", name="Inactive, no prompt", active=False)  # not callable: not reported

    checks = agents.check_prompts()
    assert [(c.name, c.status) for c in checks] == [("prompt: drafty", "fail")]
    assert "publish a version" in checks[0].fix

    prompt_publish(version=draft)
    assert [c.status for c in agents.check_prompts()] == ["ok"]


def test_an_unset_tool_secret_fails_and_its_value_is_never_shown(agent: Agent, monkeypatch) -> None:
    tool = ToolDefinition.objects.create(
        name="crm_lookup",
        description="Look up a customer.",
        kind=ToolKind.HTTP,
        http_url="https://crm.example.com/lookup",
        http_secret_headers={"Authorization": "TOOL_SECRET_DOCTOR_CRM"},
        http_signing_secret="TOOL_SECRET_DOCTOR_SIGNING",
    )
    tool.agents.add(agent)
    monkeypatch.delenv("TOOL_SECRET_DOCTOR_CRM", raising=False)
    monkeypatch.setenv("TOOL_SECRET_DOCTOR_SIGNING", "signing-value-123")

    check = _named(agents.check_tool_secrets(), "tool secrets: crm_lookup")
    assert check.status == "fail"
    assert "TOOL_SECRET_DOCTOR_CRM: NOT SET" in check.detail
    assert "TOOL_SECRET_DOCTOR_SIGNING" not in check.detail  # set: not a problem

    monkeypatch.setenv("TOOL_SECRET_DOCTOR_CRM", "crm-value-456")
    check = _named(agents.check_tool_secrets(), "tool secrets: crm_lookup")
    assert check.status == "ok" and check.detail == "2 variable(s) set"
    assert "crm-value-456" not in json.dumps(check.as_dict())

    # A row written around the admin's check, naming a server secret: reported, not read.
    ToolDefinition.objects.filter(pk=tool.pk).update(http_secret_headers={"X-Key": "DJANGO_SECRET_KEY"})
    check = _named(agents.check_tool_secrets(), "tool secrets: crm_lookup")
    assert check.status == "fail" and "DJANGO_SECRET_KEY: not allowed" in check.detail

    # A tool only an inactive agent has is not needed by any call.
    agent.active = False
    agent.save()
    assert [c.status for c in agents.check_tool_secrets()] == ["ok"]


def test_redis_that_does_not_answer_fails_and_celery_is_not_asked(settings) -> None:
    settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings.EMBEDDED_REDIS = False
    check = infrastructure.check_redis()
    assert check.status == "fail" and "ConnectionError" in check.detail
    assert "hunter2" not in check.detail and ":[REDACTED]@127.0.0.1" in check.detail
    settings.REDIS_URL = "unix:///srv/redis.sock"
    assert "unix:///srv/redis.sock" in infrastructure.check_redis().detail  # no password: as it is
    celery = infrastructure.check_celery(redis_ok=False)
    assert celery.status == "fail" and "Redis" in celery.detail


def test_the_local_agent_host_must_accept_connections(settings) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings.LOCAL_AGENT_HOST, settings.LOCAL_AGENT_PORT = listener.getsockname()
        assert transport.check_livekit(probe_timeout=1)[0].status == "ok"
    settings.LOCAL_AGENT_PORT = free_port()
    check = transport.check_livekit(probe_timeout=1)[0]
    assert check.status == "fail" and "runagent start" in check.fix


class _ModelsEndpoint:
    """An OpenAI-compatible endpoint's models list, with a key it accepts."""

    def __init__(self, key: str) -> None:
        outer = self
        self.seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {key}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"object": "list", "data": [{"id": "small-model", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_each_openai_endpoint_in_use_must_answer_its_models_list_with_its_key(agent: Agent, settings) -> None:
    endpoint = _ModelsEndpoint(key="right-key")
    try:
        agent.llm_provider = Provider.OPENAI
        agent.save()
        settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = endpoint.url, "right-key"
        in_use = agents.providers_in_use()
        assert in_use.endpoints == {"": ["support"]} and in_use.offline == ["support"]  # STT and TTS stay offline
        assert in_use.local == []

        check = agents.check_openai_endpoint("", ["support"])
        assert check.status == "ok" and "1 model(s)" in check.detail
        assert endpoint.seen == ["/v1/models"]

        settings.OPENAI_API_KEY = "wrong-key"
        check = agents.check_openai_endpoint("", ["support"])
        assert check.status == "fail" and "HTTP 401" in check.detail and "refused the key" in check.fix

        settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = "", ""
        check = agents.check_openai_endpoint("", ["support"])
        assert check.status == "fail" and "neither OPENAI_API_KEY nor OPENAI_BASE_URL" in check.detail
    finally:
        endpoint.server.shutdown()


def test_agents_on_the_local_model_need_runllm_answering(agent: Agent, settings) -> None:
    agent.llm_provider = Provider.LOCAL
    agent.save()
    in_use = agents.providers_in_use()
    assert in_use.local == ["support"] and in_use.endpoints == {}
    settings.LOCAL_LLM_HOST, settings.LOCAL_LLM_PORT = "127.0.0.1", free_port()
    check = agents.check_local_llm(in_use.local)
    assert check.status == "fail" and "used by support" in check.detail and "runllm" in check.fix

    endpoint = _ModelsEndpoint(key="none")  # llama.cpp's server takes no key; the client sends a dummy
    try:
        settings.LOCAL_LLM_PORT = endpoint.server.server_port
        check = agents.check_local_llm(in_use.local)
        assert check.status == "ok" and "1 model(s)" in check.detail and endpoint.seen == ["/v1/models"]
    finally:
        endpoint.server.shutdown()


def test_webhooks_without_a_probe_report_the_last_one(settings) -> None:
    check = transport._check_webhooks(probe_room="")
    assert check.status == "warn" and "none ever received" in check.detail
    assert "/api/v1/livekit/webhook" in check.fix
    LiveKitWebhookEvent.objects.create(event_id="EV_1", event="room_started", room_name="call-1")
    check = transport._check_webhooks(probe_room="")
    assert check.status == "ok" and "under a minute ago" in check.detail


def test_the_probe_rooms_own_webhooks_prove_they_arrive(settings, monkeypatch) -> None:
    monkeypatch.setattr(transport, "WEBHOOK_WAIT_S", 0.3)
    check = transport._check_webhooks(probe_room="doctor-probe-1")
    assert check.status == "warn" and "did not arrive within" in check.detail
    LiveKitWebhookEvent.objects.create(event_id="EV_2", event="room_started", room_name="doctor-probe-1")
    LiveKitWebhookEvent.objects.create(event_id="EV_3", event="participant_joined", room_name="doctor-probe-1")
    check = transport._check_webhooks(probe_room="doctor-probe-1")
    assert check.status == "ok" and "(room_started, participant_joined)" in check.detail


def test_production_settings_warn_on_development_defaults_and_pass_when_hardened(settings) -> None:
    check = infrastructure.check_production_settings()
    assert check.status == "warn" and "VOICE_DEV_DEFAULTS is on" in check.detail
    settings.DEBUG = settings.DEV_DEFAULTS = settings.AGENT_FAULT_INJECTION = settings.API_DOCS_PUBLIC = False
    settings.SECRET_KEY = "k" * 20 + "a-long-random-production-key-0123456789"
    settings.VOICE_HTTPS = settings.SECURE_SSL_REDIRECT = True
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = 31_536_000, True
    settings.METRICS_TOKEN = "metrics-token"
    settings.ALLOWED_HOSTS = ["voice.example.com"]
    check = infrastructure.check_production_settings()
    assert check.status == "ok", check.detail


def test_the_command_prints_json_and_exits_non_zero_when_a_call_would_fail(agent: Agent, settings) -> None:
    # No Celery worker and no agent host listen here: both are needed for a call.
    settings.LOCAL_AGENT_PORT = free_port()
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("doctor", "--json", stdout=out)
    assert exited.value.code == 1
    body = json.loads(out.getvalue())
    assert body["ok"] is False and body["summary"].startswith("broken")
    statuses = {c["name"]: c["status"] for c in body["checks"]}
    assert statuses["database"] == "ok" and statuses["redis"] == "ok" and statuses["prompts"] == "ok"
    assert statuses["agent worker"] == "fail" and statuses["celery"] == "fail"
    assert statuses["offline models"] == "ok"  # Piper, Moonshine, PocketSphinx and Silero load from their packages


def test_the_table_shows_what_to_do_under_a_failed_check(agent: Agent, settings) -> None:
    settings.LOCAL_AGENT_PORT = free_port()
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("doctor", stdout=out)
    text = out.getvalue()
    assert text.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL", "(→", "what", "to", "do)"]
    row = next(line for line in text.splitlines() if line.startswith("agent worker"))
    assert " FAIL " in row
    assert "→ start `manage.py runagent start`" in text
    assert text.rstrip().splitlines()[-1].startswith("doctor: broken")
