"""Fallback provider chains (issue 11): the real `livekit.plugins.openai.LLM` pointed at a
scripted outage server (a local OpenAI-compatible endpoint that fails on cue), followed by
a healthy fallback. Each failure mode ends in a completed turn, `provider.error` and
`provider.failover` events, and the `voice_provider_failures_total` metric.

Text mode (`session.run`) where audio is not the point; the all-down case runs the audio
path to check that the apology reaches the caller.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents_app.models import Provider
from agents_app.runtime.simulator.outage_server import ScriptedOutageServer
from tests.pipeline.conftest import CallDriver, TextJob, db, make_session, provider_events, wait_turns

pytestmark = pytest.mark.django_db(transaction=True)

FALLBACK_REPLY = "This is the backup line answering."


def _configure(agent: Any, *, primary_url: str, fallbacks: list[dict[str, str]]) -> None:
    agent.llm_provider = Provider.OPENAI
    agent.llm_model = "primary-model"
    agent.llm_fallbacks = fallbacks
    # A small budget keeps the hang case short: timeout = max(1 s, 3 x budget).
    agent.budget_llm_ttft_ms = 300
    agent.save()


def _failures(stage: str, provider: str) -> float:
    from sessions_app import metrics

    return metrics.PROVIDER_FAILURES.labels(stage=stage, provider=provider)._value.get()


@pytest.mark.parametrize("mode", ["500", "429", "hang", "cut"])
async def test_a_failing_primary_llm_fails_over_to_the_healthy_fallback(agent, settings, mode):
    primary = ScriptedOutageServer(script=[mode], then="ok", hang_seconds=20, reply="Primary speaking, all good here.")
    backup = ScriptedOutageServer(reply=FALLBACK_REPLY)
    async with primary, backup:
        settings.OPENAI_API_KEY = ""
        settings.OPENAI_BASE_URL = primary.base_url
        settings.OPENAI_ENDPOINTS = {"backup": {"base_url": backup.base_url, "api_key_env": ""}}
        await db(
            _configure,
            agent,
            primary_url=primary.base_url,
            fallbacks=[{"provider": "openai", "model": "backup-model", "endpoint": "backup"}],
        )
        session_id = await db(make_session, agent)
        primary_label = f"127.0.0.1:{primary.port}"
        before = _failures("llm", primary_label)

        async with TextJob(session_id) as job:
            # livekit's own FallbackAdapter does the failing over (ours only notes times and members).
            from livekit.agents.llm import FallbackAdapter

            assert isinstance(job.runtime.providers.llm, FallbackAdapter)
            result = await job.session.run(user_input="where is my parcel")
            message = result.expect[-1].event().item
            assert message.role == "assistant"
            if mode == "cut":
                # The broken stream's first words were already sent; the fallback's answer follows.
                assert message.text_content.startswith("Primary speaking,")
            assert message.text_content.endswith(FALLBACK_REPLY)

        turns = await wait_turns(session_id, 1)
        assert turns[-1]["user_text"] == "where is my parcel"
        assert FALLBACK_REPLY in turns[-1]["heard_text"]
        events = await db(provider_events, session_id)
        error = next(e for e in events if e["type"] == "provider.error")
        failover = next(e for e in events if e["type"] == "provider.failover")
        expected_class = {
            "500": "APIStatusError",
            "429": "APIStatusError",
            "hang": "APITimeoutError",
            "cut": "APIConnectionError",
        }
        assert error["stage"] == "llm" and error["provider"] == f"{primary_label}:primary-model"
        assert error["error_class"] == expected_class[mode]
        assert failover["provider"] == f"{primary_label}:primary-model"
        assert failover["to"] == f"127.0.0.1:{backup.port}:backup-model"
        assert failover["time_lost_ms"] is not None and failover["time_lost_ms"] >= 0
        assert _failures("llm", primary_label) == before + 1
        assert primary.log[0]["mode"] == mode and backup.log, "the backup answered the turn"
        print(f"FAILOVER {mode}: time lost {failover['time_lost_ms']} ms")


async def test_a_lone_hung_provider_times_out_within_the_budget_instead_of_hanging(agent, settings):
    """No fallback configured: the budgeted timeout still ends the wait, with an apology."""
    primary = ScriptedOutageServer(script=["hang"], then="ok", hang_seconds=20)
    async with primary:
        settings.OPENAI_API_KEY = ""
        settings.OPENAI_BASE_URL = primary.base_url
        await db(_configure, agent, primary_url=primary.base_url, fallbacks=[])
        session_id = await db(make_session, agent)
        async with TextJob(session_id) as job:
            first = await asyncio.wait_for(job.session.run(user_input="hello?"), 15)
            assert "technical problem" in first.expect[-1].event().item.text_content
            result = await job.session.run(user_input="hello again")
            assert result.expect[-1].event().item.text_content.startswith("Sure, I can help")
        events = await db(provider_events, session_id, "")
        types = [e["type"] for e in events]
        assert "provider.stage_failed" in types and "agent.apology" in types
        failed = next(e for e in events if e["type"] == "provider.stage_failed")
        assert failed["error_class"] == "APIConnectionError" and failed["stage"] == "llm"


async def test_all_providers_down_plays_the_apology_and_the_next_turn_works_after_recovery(agent, settings, prewarmed):
    primary = ScriptedOutageServer(then="500", reply="Primary is back, how can I help?")
    backup = ScriptedOutageServer(then="500", reply=FALLBACK_REPLY)
    async with primary, backup:
        settings.OPENAI_API_KEY = ""
        settings.OPENAI_BASE_URL = primary.base_url
        settings.OPENAI_ENDPOINTS = {"backup": {"base_url": backup.base_url, "api_key_env": ""}}
        await db(
            _configure,
            agent,
            primary_url=primary.base_url,
            fallbacks=[{"provider": "openai", "model": "backup-model", "endpoint": "backup"}],
        )
        session_id = await db(make_session, agent)
        driver = await CallDriver(session_id).start()
        await driver.wait_speaking(True)  # the greeting
        await driver.wait_speaking(False)
        heard_before = driver.played_seconds

        await driver.say("where is my parcel")
        await driver.wait_speaking(True, timeout=40)
        await driver.wait_speaking(False, timeout=40)
        assert driver.played_seconds - heard_before > 1.0, "the apology's audio reached the caller"
        turns = await wait_turns(session_id, 2)
        assert "technical problem" in turns[1]["heard_text"]
        assert "all LLMs failed" in turns[1]["error"]

        primary.set_mode("ok")
        backup.set_mode("ok")
        await asyncio.sleep(0.5)
        await driver.say("where is my parcel")
        turns = await wait_turns(session_id, 3, timeout=60)
        assert turns[2]["error"] == ""
        assert turns[2]["heard_text"] in ("Primary is back, how can I help?", FALLBACK_REPLY)
        await driver.hangup()

    types = await db(lambda: [e["type"] for e in provider_events(session_id, "")])
    assert "provider.stage_failed" in types and "agent.apology" in types
    assert types.count("provider.error") >= 2  # both providers of the chain failed


async def test_a_tts_that_fails_mid_answer_hands_the_rest_to_the_next_tts(agent, settings, prewarmed):
    """The openai TTS plugin against the scripted server: the greeting's first sentence
    comes from it, the second fails (500) and the offline TTS speaks the rest."""
    speech = ScriptedOutageServer(script=["ok", "500"], then="500")
    async with speech:
        settings.OPENAI_API_KEY = ""
        settings.OPENAI_BASE_URL = speech.base_url

        def use_openai_tts() -> None:
            agent.tts_provider = Provider.OPENAI
            agent.tts_model = "scripted-tts"
            agent.tts_fallbacks = [{"provider": "offline"}]
            agent.save()

        await db(use_openai_tts)
        session_id = await db(make_session, agent)
        driver = await CallDriver(session_id).start()
        await driver.wait_speaking(True, timeout=40)
        await driver.wait_speaking(False, timeout=40)
        turns = await wait_turns(session_id, 1)
        await driver.hangup()

    greeting = "Hello, this is Acme support. How can I help?"
    assert turns[0]["heard_text"] == greeting and not turns[0]["error"]
    # Both sentences were heard: ~2.5 s of speech, not just the first sentence's ~1.5 s.
    assert driver.played_seconds > 2.2, driver.played_seconds
    assert [entry["mode"] for entry in speech.log[:2]] == ["ok", "500"]
    events = await db(provider_events, session_id)
    failover = next(e for e in events if e["type"] == "provider.failover")
    assert failover["stage"] == "tts" and failover["to"] == "offline:piper/en_US-joe-medium"
    assert failover["error_class"] == "APIStatusError"
    print(f"FAILOVER tts mid-answer: time lost {failover['time_lost_ms']} ms")


def test_the_outage_scenarios_validate_and_the_summary_counts_failovers():
    from agents_app.runtime.simulator import scenarios
    from agents_app.runtime.simulator.summary import summarize

    outage = scenarios.load("provider-outage").outage
    assert outage["stage"] == "llm" and "hang" in outage["script"] and "500" in outage["script"]
    assert scenarios.load("tts-outage").outage["stage"] == "tts"
    with pytest.raises(scenarios.ScenarioError, match="outage"):
        scenarios.parse({"name": "x", "steps": [{"end": {}}], "outage": {"stage": "llm", "script": ["boom"]}})

    result = SimpleNamespace(
        ok=True, number=1, scenario="provider-outage", session_id="s", error="", tool_retries=[],
        detail={"turns": [], "failovers": [{"time_lost_ms": 1534.5}, {"time_lost_ms": 6.9}],
                "provider_errors": [{"stage": "llm"}, {"stage": "llm"}]},
    )  # fmt: skip
    summary = summarize([result])
    assert summary["failovers"] == 2 and summary["provider_errors"] == 2
    assert summary["failover_ms"] == {"p50": 6.9, "p95": 1534.5, "max": 1534.5}


def test_it_rejects_malformed_fallback_lists():
    from django.core.exceptions import ValidationError

    from agents_app.runtime.providers.fallback import validate_fallbacks

    assert validate_fallbacks([{"provider": "offline"}], stage="tts") == [{"provider": "offline"}]
    assert validate_fallbacks([{"provider": "local"}], stage="llm") == [{"provider": "local"}]
    for bad in ({"provider": "openai"}, [{"provider": "acme"}], [{"provider": "openai", "base_url": "https://x/v1"}],
                [{"provider": "openai", "key": "secret"}], [{"provider": "openai", "endpoint": "nowhere"}]):  # fmt: skip
        with pytest.raises(ValidationError):
            validate_fallbacks(bad, stage="llm")
    for stage in ("stt", "tts"):  # the local llama.cpp server answers chat only
        with pytest.raises(ValidationError, match="only the LLM stage"):
            validate_fallbacks([{"provider": "local"}], stage=stage)
