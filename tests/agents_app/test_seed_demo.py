"""`manage.py seed_demo` creates the demo and is safe to run again."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import call_command

from agents_app.models import Agent, PhoneLine, PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish
from tools_app.models import ToolDefinition, ToolKind

pytestmark = pytest.mark.django_db


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_it_creates_the_demo_agents_prompts_tools_and_logins():
    output = seed()
    agent = Agent.objects.get(slug="demo-scripted")
    assert (agent.stt_provider, agent.llm_provider, agent.tts_provider) == ("offline", "offline", "offline")
    prompt = prompt_published(agent=agent)
    assert prompt is not None and prompt.number == 1
    assert {"company", "assistant_name"} <= set(prompt.placeholders())
    assert set(prompt.placeholders()) <= set(prompt.variables)  # every placeholder has a default
    assert "place_order" in prompt.instructions and "charge_wallet" in prompt.instructions

    conversation = Agent.objects.get(slug="demo")
    assert prompt_published(agent=conversation) is not None
    assert not ToolDefinition.objects.filter(agents=conversation).exists()  # the small model calls none

    tools = {t.name: t for t in ToolDefinition.objects.filter(agents=agent)}
    assert set(tools) == {"place_order", "charge_wallet"}
    for name, tool in tools.items():
        assert tool.kind == ToolKind.BUILTIN and tool.builtin_name == name and tool.enabled
        tool.full_clean()  # the parameters are a valid JSON Schema
        assert tool.parameters["type"] == "object" and tool.parameters["required"]

    staff = authenticate(username="staff", password="voice-demo")
    assert staff is not None and staff.is_staff and not staff.is_superuser
    assert staff.groups.filter(name="Support staff").exists()
    admin = authenticate(username="admin", password="voice-demo")
    assert admin is not None and admin.is_superuser
    editor = authenticate(username="editor", password="voice-demo")
    assert editor is not None and editor.groups.filter(name="Prompt editors").exists()

    for text in (
        "'demo' (created; LLM ",
        "'demo-scripted' (created; LLM offline)",
        "http://127.0.0.1:8000/admin/",
        "http://127.0.0.1:8000/dashboard/",
        "voice-demo",
        "staff",
        "admin",
    ):
        assert text in output


def test_running_it_twice_duplicates_nothing():
    seed()
    counts = (
        Agent.objects.count(),
        PromptVersion.objects.count(),
        ToolDefinition.objects.count(),
        User.objects.count(),
    )
    output = seed()
    assert (Agent.objects.count(), PromptVersion.objects.count(), ToolDefinition.objects.count(),
            User.objects.count()) == counts  # fmt: skip
    assert ToolDefinition.objects.get(name="place_order").agents.count() == 1
    assert "already there" in output


def test_it_never_resets_an_edited_prompt_tool_or_password():
    seed()
    agent = Agent.objects.get(slug="demo")
    edited = prompt_draft_create(agent=agent, instructions="Our own words for {{company}}", variables={"company": "Z"})
    prompt_publish(version=edited)
    ToolDefinition.objects.filter(name="place_order").update(description="Edited by a person")
    staff = User.objects.get(username="staff")
    staff.set_password("my-own-password")
    staff.save()

    seed()
    assert prompt_published(agent=agent).pk == edited.pk
    assert PromptVersion.objects.filter(agent=agent).count() == 2
    assert ToolDefinition.objects.get(name="place_order").description == "Edited by a person"
    assert authenticate(username="staff", password="my-own-password") is not None

    seed("--reset-passwords")
    assert authenticate(username="staff", password="voice-demo") is not None


def test_it_publishes_a_first_prompt_when_the_agent_has_only_drafts():
    agent = Agent.objects.create(slug="demo", name="Someone's demo")
    prompt_draft_create(agent=agent, instructions="unfinished draft")
    seed()
    assert Agent.objects.get(slug="demo").name == "Someone's demo"
    published = prompt_published(agent=agent)
    assert published is not None and published.number == 2
    assert PromptVersion.objects.get(agent=agent, number=1).status == PromptStatus.DRAFT


def test_the_conversation_agent_runs_the_real_local_model_when_it_is_installed(settings, tmp_path):
    from agents_app.runtime.providers import local_llm

    assert local_llm.available(), "make install puts xllamacpp and the packaged SmolLM2 in the venv"
    seed()
    agent = Agent.objects.get(slug="demo")
    assert (agent.llm_provider, agent.llm_fallbacks) == ("local", [{"provider": "offline"}])

    PhoneLine.objects.all().delete()  # an agent with a phone line cannot be deleted
    Agent.objects.filter(slug__in=("demo", "demo-scripted")).delete()
    settings.LOCAL_LLM_MODEL_PATH = str(tmp_path / "missing.gguf")  # no model: the stand-in, said so
    seed()
    agent = Agent.objects.get(slug="demo")
    assert (agent.llm_provider, agent.llm_fallbacks) == ("offline", [])
    assert "not installed" in agent.description


def test_the_demo_agent_gets_a_phone_line_callable_from_this_machine_only(monkeypatch):
    monkeypatch.delenv("LIVEKIT_NODE_IP", raising=False)
    seed()
    line = PhoneLine.objects.get()
    assert (line.number, line.agent.slug, line.allowed_addresses) == ("+15550100", "demo", ["127.0.0.1"])
    line.allowed_addresses = ["203.0.113.10"]
    line.save()
    seed()  # an edited line is kept
    assert PhoneLine.objects.get().allowed_addresses == ["203.0.113.10"]
