"""Build the STT, LLM and TTS of a job from the Agent's provider settings.

`openai`: livekit-plugins-openai, honouring OPENAI_BASE_URL, so any OpenAI-compatible
server works (Ollama, vLLM, llama.cpp server). `offline`: PocketSphinx STT, Piper TTS
and the OfflineStandInLLM. An agent set to `openai` never silently falls back to the
stand-in: a missing key is an error the operator sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from livekit.agents import llm, stt, tts

from agents_app.models import Agent, Provider

DEFAULT_OPENAI_MODELS = {"stt": "gpt-4o-mini-transcribe", "llm": "gpt-4.1-mini", "tts": "gpt-4o-mini-tts"}


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


def build_stt(agent: Agent) -> stt.STT:
    if agent.stt_provider == Provider.OPENAI:
        from livekit.plugins import openai

        return openai.STT(
            model=agent.stt_model or DEFAULT_OPENAI_MODELS["stt"], language=agent.language, **openai_kwargs()
        )
    from agents_app.providers.sphinx import PocketSphinxSTT

    return PocketSphinxSTT(phrases=list(agent.stt_phrases or []), language=agent.language)


def build_llm(agent: Agent) -> llm.LLM:
    if agent.llm_provider == Provider.OPENAI:
        from livekit.plugins import openai

        return openai.LLM(model=agent.llm_model or DEFAULT_OPENAI_MODELS["llm"], **openai_kwargs())
    from agents_app.providers.offline_llm import OfflineStandInLLM

    return OfflineStandInLLM()


def build_tts(agent: Agent) -> tts.TTS:
    if agent.tts_provider == Provider.OPENAI:
        from livekit.plugins import openai

        kwargs: dict[str, Any] = {"model": agent.tts_model or DEFAULT_OPENAI_MODELS["tts"]}
        if agent.tts_voice:
            kwargs["voice"] = agent.tts_voice
        return openai.TTS(**kwargs, **openai_kwargs())
    # GPL-3.0 Piper is imported only here, for agents that use the offline TTS.
    from agents_app.providers.piper import PiperTTS

    return PiperTTS()


def build_providers(agent: Agent, *, vad: Any = None) -> Providers:
    # Each stage is the primary plus the agent's fallbacks, chained by livekit-agents'
    # FallbackAdapters with budgeted timeouts (issue 11; agents_app/providers/fallback.py).
    from agents_app.providers.fallback import build_chain

    return Providers(
        stt=build_chain("stt", agent, build_stt(agent), vad=vad),
        llm=build_chain("llm", agent, build_llm(agent)),
        tts=build_chain("tts", agent, build_tts(agent)),
    )


def prewarm_offline() -> None:
    """Load the offline models before the first call (blocking; for prewarm)."""
    from agents_app.providers import piper, sphinx

    piper.load_voice()
    sphinx.warm_pool()
    from agents_app.providers import apology

    apology.prerender()  # the clip played when a whole stage fails
