"""The heard-latency settings reach livekit-agents' AgentSession (docs/latency.md)."""

from __future__ import annotations


async def test_endpointing_and_preemptive_tts_come_from_settings(settings) -> None:
    from livekit.agents import AgentSession

    from agents_app.runtime.worker.platform_agent import session_options

    settings.ENDPOINTING_MIN_DELAY_SECONDS = 0.25
    settings.PREEMPTIVE_TTS = True
    session = AgentSession(**session_options(allow_interruptions=False))
    assert session.options.turn_handling["endpointing"]["min_delay"] == 0.25
    assert session.options.turn_handling["endpointing"]["max_delay"] == 3.0  # livekit's default kept
    assert session.options.turn_handling["preemptive_generation"]["preemptive_tts"] is True
    assert session.options.turn_handling["preemptive_generation"]["enabled"] is True
    assert session.options.turn_handling["interruption"]["enabled"] is False


def test_the_vad_ends_speech_after_the_configured_silence(settings, monkeypatch) -> None:
    from agents_app.runtime.providers import factory

    settings.VAD_MIN_SILENCE_SECONDS = 0.3
    monkeypatch.setattr(factory, "_VADS", {})  # the process's VADs are loaded once
    vad = factory.load_vad()
    assert vad._opts.min_silence_duration == 0.3
