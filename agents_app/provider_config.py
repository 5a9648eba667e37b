"""Checks of an agent's provider settings that the admin runs on save (no runtime imports).

Fallback entries: {"provider": "openai"|"offline", "model": "...", "endpoint": "<name>",
"voice": "..."}. An OpenAI-compatible endpoint is named, never typed: its URL and key come
from the operator's settings (OPENAI_BASE_URL/OPENAI_API_KEY, or OPENAI_ENDPOINTS), so a
prompt editor cannot make the worker send a server key and the transcripts to their host.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from agents_app.models import STAGE_PROVIDERS, Provider

_ENTRY_KEYS = {"provider", "model", "endpoint", "voice"}


def stage_provider_error(stage: str, provider: str) -> str:
    """Why `provider` cannot serve `stage`, or "" when it can."""
    allowed = STAGE_PROVIDERS[stage]
    if provider in allowed:
        return ""
    return f"{stage.upper()} provider must be one of {', '.join(allowed)} (the local model answers only the LLM stage)."


def validate_fallbacks(value: Any, *, stage: str) -> list[dict[str, str]]:
    """Check one stage's fallback list (admin form / services). Raises ValidationError."""
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise ValidationError("Fallbacks must be a list of {provider, model, endpoint} objects.")
    cleaned: list[dict[str, str]] = []
    for n, entry in enumerate(value, start=1):
        if not isinstance(entry, dict):
            raise ValidationError(f"Fallback {n} must be an object with a 'provider' key.")
        if "base_url" in entry:
            raise ValidationError(f"Fallback {n}: {endpoint_choice_message()}")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ValidationError(f"Fallback {n} has unknown keys: {', '.join(sorted(unknown))}.")
        provider = entry.get("provider")
        if provider not in Provider.values:
            raise ValidationError(f"Fallback {n}: provider must be one of {', '.join(Provider.values)}.")
        wrong_stage = stage_provider_error(stage, provider)
        if wrong_stage:
            raise ValidationError(f"Fallback {n}: {wrong_stage}")
        endpoint = str(entry.get("endpoint") or "")
        if endpoint and endpoint not in getattr(settings, "OPENAI_ENDPOINTS", {}):
            raise ValidationError(f"Fallback {n}: unknown endpoint {endpoint!r}. {endpoint_choice_message()}")
        cleaned.append({k: str(v) for k, v in entry.items() if v not in (None, "")})
    return cleaned


def endpoint_choice_message() -> str:
    names = ", ".join(sorted(getattr(settings, "OPENAI_ENDPOINTS", {}))) or "none configured"
    return (
        'a fallback names an endpoint configured by the operator ("endpoint": one of: '
        f"{names}; OPENAI_ENDPOINTS), never a base_url: a server key must not go to a typed URL."
    )
