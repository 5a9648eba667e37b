"""Build the STT, LLM and TTS of a job from the Agent's provider settings.

`openai`: livekit-plugins-openai, honouring OPENAI_BASE_URL, so any OpenAI-compatible
server works (Ollama, vLLM, llama.cpp server). `local` (LLM only): the machine's own
llama.cpp server (`manage.py runllm`, agents_app/runtime/providers/local_llm.py) through
the same livekit-plugins-openai LLM. `offline`: Moonshine tiny-en STT (open vocabulary;
the STT model "pocketsphinx" picks PocketSphinx with the agent's phrase list as its
grammar), Piper TTS and the OfflineStandInLLM. An agent set to `openai` never silently
falls back to the stand-in: a missing key is an error the operator sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from livekit.agents import llm, stt, tts

from agents_app.models import Agent, Provider
from agents_app.runtime.providers.fallback import STAGES, build_chain, usable_entries

DEFAULT_OPENAI_MODELS = {"stt": "gpt-4o-mini-transcribe", "llm": "gpt-4.1-mini", "tts": "gpt-4o-mini-tts"}
# The offline STT model name that picks PocketSphinx instead of Moonshine (case-insensitive).
POCKETSPHINX = "pocketsphinx"


@dataclass
class Providers:
    stt: stt.STT
    llm: llm.LLM
    tts: tts.TTS

    def describe(self) -> dict[str, str]:
        return {
            "stt": f"{self.stt.provider}:{self.stt.model}",
            "llm": f"{self.llm.provider}:{self.llm.model}",
            "tts": f"{self.tts.provider}:{self.tts.model}",
        }


def openai_kwargs(endpoint: str = "") -> dict[str, Any]:
    """api_key and base_url for livekit-plugins-openai: the default endpoint
    (OPENAI_API_KEY, OPENAI_BASE_URL) or one named in OPENAI_ENDPOINTS, with its own key.

    The URL always comes from settings: a server key never goes to a URL an editor typed.
    """
    if endpoint:
        spec = getattr(settings, "OPENAI_ENDPOINTS", {}).get(endpoint)
        if spec is None:
            raise ImproperlyConfigured(f"No OpenAI endpoint named {endpoint!r} in OPENAI_ENDPOINTS.")
        key_env = spec.get("api_key_env") or ""
        key = os.environ.get(key_env, "") if key_env else ""
        if key_env and not key:
            raise ImproperlyConfigured(f"The {endpoint!r} endpoint's key variable {key_env} is not set.")
        return {"api_key": key or "not-needed", "base_url": spec["base_url"]}
    key = getattr(settings, "OPENAI_API_KEY", "")
    base_url = getattr(settings, "OPENAI_BASE_URL", "")
    if not key and not base_url:
        raise ImproperlyConfigured(
            "This agent uses the openai provider but neither OPENAI_API_KEY nor OPENAI_BASE_URL is set."
        )
    kwargs: dict[str, Any] = {"api_key": key or "not-needed"}
    if base_url:
        kwargs["base_url"] = base_url
    return kwargs


def load_vad(min_silence: float | None = None) -> Any:
    """Silero VAD, loaded once per process and silence length (the session's turn
    detection, and the segmenter of a non-streaming STT in a fallback chain).

    `min_silence`: the silence that ends the caller's speech, VAD_MIN_SILENCE_SECONDS by
    default (docs/latency.md); semantic end of turn runs with a shorter one."""
    silence = settings.VAD_MIN_SILENCE_SECONDS if min_silence is None else min_silence
    vad = _VADS.get(silence)
    if vad is None:
        from livekit.plugins import silero

        vad = _VADS[silence] = silero.VAD.load(min_silence_duration=silence)
    return vad


_VADS: dict[float, Any] = {}


def primary_spec(stage: str, agent: Agent) -> dict[str, str]:
    """The agent's own provider for a stage, as a spec like a fallback entry's."""
    spec = {"provider": getattr(agent, f"{stage}_provider"), "model": getattr(agent, f"{stage}_model") or ""}
    if stage == "tts" and agent.tts_voice:
        spec["voice"] = agent.tts_voice
    return spec


def build_provider(stage: str, spec: dict[str, Any], agent: Agent) -> Any:
    """The one builder: a spec ({"provider", "model", "endpoint", "voice"}) → an STT, LLM or
    TTS instance. The primary is the first spec of a chain; fallbacks are the others."""
    provider = spec.get("provider")
    model = spec.get("model") or ""
    if provider == Provider.OFFLINE:
        if stage == "stt":
            if model.strip().lower() == POCKETSPHINX:
                from agents_app.runtime.providers import sphinx

                recogniser = sphinx.PocketSphinxSTT(phrases=list(agent.stt_phrases or []), language=agent.language)
                # Prewarm does not start its process pool (few agents use it): start it now,
                # while the greeting plays, instead of on the caller's first words.
                sphinx.warm_in_background(list(recogniser.phrases))
                return recogniser
            # Any other model name (blank included) is the default: Moonshine.
            from agents_app.runtime.providers.moonshine import MoonshineSTT

            return MoonshineSTT(language=agent.language)
        if stage == "llm":
            from agents_app.runtime.providers.offline_llm import OfflineStandInLLM

            return OfflineStandInLLM()
        # GPL-3.0 Piper is imported only here, for agents that use the offline TTS.
        from agents_app.runtime.providers.piper import PiperTTS

        return PiperTTS()
    if provider == Provider.LOCAL:
        if stage != "llm":
            raise ValueError(f"the local provider serves only the LLM stage, not {stage}")
        from agents_app.runtime.providers import local_llm

        return local_llm.build_llm(model)
    if provider != Provider.OPENAI:
        raise ValueError(f"unknown {stage} provider {provider!r}")
    from livekit.plugins import openai

    kwargs = openai_kwargs(spec.get("endpoint") or "")
    model = model or DEFAULT_OPENAI_MODELS[stage]
    if stage == "stt":
        return openai.STT(model=model, language=agent.language, **kwargs)
    if stage == "llm":
        return openai.LLM(model=model, **kwargs)
    if spec.get("voice"):
        kwargs["voice"] = spec["voice"]
    return openai.TTS(model=model, **kwargs)


def build_providers(agent: Agent, *, vad: Any = None) -> Providers:
    """Each stage: the primary plus the agent's fallbacks, chained by livekit-agents'
    FallbackAdapters with budgeted timeouts (agents_app/runtime/providers/fallback.py). `vad`
    segments a non-streaming STT in a chain (the process's Silero VAD when not given)."""
    vad = vad if vad is not None else load_vad()
    stages = {}
    for stage in STAGES:
        specs = [primary_spec(stage, agent), *usable_entries(stage, agent)]
        stages[stage] = build_chain(stage, agent, [build_provider(stage, spec, agent) for spec in specs], vad=vad)
    return Providers(**stages)


def prewarm_offline() -> None:
    """Load the offline models before the first call (blocking; for prewarm).

    Moonshine is the offline STT by default. PocketSphinx's process pool starts with the
    first agent that picks it (`build_provider`; `sphinx.warm_pool()` loads it ahead, blocking):
    spawning its processes in every job process would cost memory that few agents use."""
    from agents_app.runtime.providers import moonshine, piper

    piper.load_voice()
    moonshine.warm()
    from agents_app.runtime.providers import apology

    apology.prerender()  # the clip played when a whole stage fails


def shutdown_offline() -> None:
    """Stop the offline STT's decoders (a LiveKit job process, at the end of its one job):
    Moonshine's threads and, if an agent used it, PocketSphinx's process pool. Either is a
    no-op when it never started."""
    from agents_app.runtime.providers import moonshine, sphinx

    moonshine.shutdown_pool()
    sphinx.shutdown_pool()
