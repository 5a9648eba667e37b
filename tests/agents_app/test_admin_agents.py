"""Agent admin: fieldsets, search and filters, and clear errors for bad input."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from agents_app.models import DEFAULT_BUDGETS_MS, Agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def agent_form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "Sales",
        "slug": "sales",
        "description": "",
        "active": "on",
        "stt_provider": "offline",
        "stt_model": "",
        "language": "en",
        "stt_phrases": "[]",
        "stt_fallbacks": "[]",
        "llm_provider": "offline",
        "llm_model": "",
        "llm_fallbacks": "[]",
        "tts_provider": "offline",
        "tts_model": "",
        "tts_voice": "",
        "tts_fallbacks": "[]",
        "allow_interruptions": "on",
        "turn_detection": "smart_turn",
        "turn_eagerness": "balanced",
        "ignore_backchannels": "on",
        "barge_in_min_speech_ms": "800",
        # The read-only prompt versions inline still posts its management form.
        "prompt_versions-TOTAL_FORMS": "0",
        "prompt_versions-INITIAL_FORMS": "0",
        "prompt_versions-MIN_NUM_FORMS": "0",
        "prompt_versions-MAX_NUM_FORMS": "1000",
    }
    data.update({f"budget_{stage}_ms": value for stage, value in DEFAULT_BUDGETS_MS.items()})
    data.update(overrides)
    return data


def test_it_creates_an_agent_with_fallbacks_and_phrases(admin_client_):
    response = admin_client_.post(
        reverse("admin:agents_app_agent_add"),
        agent_form(stt_phrases='["place an order"]', llm_fallbacks='[{"provider": "offline"}]'),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    agent = Agent.objects.get(slug="sales")
    assert agent.stt_phrases == ["place an order"]
    assert agent.llm_fallbacks == [{"provider": "offline"}]


def test_it_rejects_a_duplicate_slug_clearly_and_saves_nothing(admin_client_, agent):
    response = admin_client_.post(reverse("admin:agents_app_agent_add"), agent_form(name="Other", slug=agent.slug))
    assert response.status_code == 200
    assert "Another agent already uses this slug" in response.content.decode()
    assert Agent.objects.filter(slug=agent.slug).count() == 1
    assert not Agent.objects.filter(name="Other").exists()


def test_it_rejects_an_unknown_fallback_provider(admin_client_):
    response = admin_client_.post(
        reverse("admin:agents_app_agent_add"), agent_form(tts_fallbacks='[{"provider": "elevenlabs"}]')
    )
    assert response.status_code == 200
    assert "unknown provider" in response.content.decode()
    assert not Agent.objects.filter(slug="sales").exists()


def test_the_local_model_is_offered_for_the_llm_only(admin_client_):
    add = reverse("admin:agents_app_agent_add")
    for overrides in (
        {"stt_provider": "local"},
        {"tts_provider": "local"},
        {"tts_fallbacks": '[{"provider": "local"}]'},
    ):
        response = admin_client_.post(add, agent_form(**overrides))
        assert response.status_code == 200, overrides
        assert "the local model answers only the LLM stage" in response.content.decode(), overrides
        assert not Agent.objects.filter(slug="sales").exists()
    response = admin_client_.post(add, agent_form(llm_provider="local", llm_fallbacks='[{"provider": "offline"}]'))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Agent.objects.get(slug="sales").llm_provider == "local"


def test_it_rejects_malformed_json_in_phrases(admin_client_):
    response = admin_client_.post(reverse("admin:agents_app_agent_add"), agent_form(stt_phrases="[place an order"))
    assert response.status_code == 200
    assert "This is not valid JSON" in response.content.decode()
    assert not Agent.objects.filter(slug="sales").exists()


def test_it_rejects_a_budget_out_of_range(admin_client_):
    response = admin_client_.post(reverse("admin:agents_app_agent_add"), agent_form(budget_e2e_ms="5"))
    assert response.status_code == 200
    assert not Agent.objects.filter(slug="sales").exists()


def test_agent_page_groups_settings_and_lists_prompt_versions(admin_client_, agent):
    html = admin_client_.get(reverse("admin:agents_app_agent_change", args=[agent.pk])).content.decode()
    for heading in ("Speech recognition (STT)", "Language model (LLM)", "Voice (TTS)", "Latency budgets"):
        assert heading in html
    assert "Prompt versions" in html
    assert reverse("admin:agents_app_promptversion_change", args=[agent.prompt_versions.get().pk]) in html


def test_agent_list_searches_and_filters(admin_client_, agent):
    Agent.objects.create(slug="billing", name="Billing bot", active=False)
    changelist = reverse("admin:agents_app_agent_changelist")
    found = admin_client_.get(changelist, {"q": "billing"}).content.decode()
    assert "Billing bot" in found and "Support agent" not in found
    inactive = admin_client_.get(changelist, {"active__exact": "0"}).content.decode()
    assert "Billing bot" in inactive and "Support agent" not in inactive


def test_an_editor_sets_how_the_agent_takes_turns(admin_client_):
    page = admin_client_.get(reverse("admin:agents_app_agent_add")).content.decode()
    assert "Turn-taking" in page and "Speech before barge-in" in page
    response = admin_client_.post(
        reverse("admin:agents_app_agent_add"),
        agent_form(
            turn_detection="vad", turn_eagerness="patient", ignore_backchannels="", barge_in_min_speech_ms="600"
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    agent = Agent.objects.get(slug="sales")
    assert (agent.turn_detection, agent.turn_eagerness) == ("vad", "patient")
    assert agent.ignore_backchannels is False and agent.barge_in_min_speech_ms == 600


def test_new_agents_take_turns_semantically_and_ignore_backchannels_by_default(db):
    agent = Agent.objects.create(slug="fresh", name="Fresh")
    assert (agent.turn_detection, agent.turn_eagerness, agent.ignore_backchannels, agent.barge_in_min_speech_ms) == (
        "smart_turn",
        "balanced",
        True,
        800,
    )


@pytest.mark.parametrize(("field", "value"), [("barge_in_min_speech_ms", "50"), ("turn_eagerness", "reckless")])
def test_it_refuses_a_turn_taking_setting_out_of_range(admin_client_, field, value):
    response = admin_client_.post(reverse("admin:agents_app_agent_add"), agent_form(**{field: value}))
    assert response.status_code == 200
    assert not Agent.objects.filter(slug="sales").exists()
    assert "errorlist" in response.content.decode()
