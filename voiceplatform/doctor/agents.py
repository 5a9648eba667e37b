"""Doctor checks of what the active agents use: a published prompt, each model endpoint
(OpenAI-compatible) answering its models list, the offline models loading, and the tool
secrets set."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

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


def providers_in_use() -> tuple[dict[str, list[str]], list[str]]:
    """(OpenAI-compatible endpoint name ("" is the default one) → slugs of the active agents
    that use it, slugs of the active agents that use an offline stand-in), over every
    stage's primary provider and fallbacks, read as the worker reads them when it builds
    a call's providers (a malformed fallback is skipped there, so here too)."""
    from agents_app.models import Provider
    from agents_app.providers.factory import primary_spec
    from agents_app.providers.fallback import STAGES, usable_entries
    from agents_app.selectors import agents_active

    endpoints: dict[str, list[str]] = {}
    offline: list[str] = []
    for agent in agents_active():
        for stage in STAGES:
            for entry in [primary_spec(stage, agent), *usable_entries(stage, agent)]:
                users = (
                    endpoints.setdefault(str(entry.get("endpoint") or ""), [])
                    if entry.get("provider") == Provider.OPENAI
                    else offline
                )
                if agent.slug not in users:
                    users.append(agent.slug)
    return endpoints, offline


def check_openai_endpoint(name: str, agents: list[str]) -> Check:
    from django.core.exceptions import ImproperlyConfigured

    from agents_app.providers.factory import openai_kwargs

    label = f"model endpoint: {name or 'default'}"
    users = f"used by {', '.join(agents)}"
    try:
        kwargs = openai_kwargs(name)
    except ImproperlyConfigured as exc:
        return Check(label, FAIL, f"{users}; {exc}", "set the endpoint's variables (docs/configuration.md)")
    base_url = str(kwargs.get("base_url") or "https://api.openai.com/v1").rstrip("/")
    request = urllib.request.Request(
        f"{base_url}/models", headers={"Authorization": f"Bearer {kwargs['api_key']}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = json.loads(response.read(1_000_000) or b"{}")
    except urllib.error.HTTPError as exc:
        fix = "the endpoint refused the key: check its key variable" if exc.code in (401, 403) else "check the URL"
        return Check(label, FAIL, f"{users}; {base_url}/models answered HTTP {exc.code}", fix)
    except Exception as exc:
        return Check(label, FAIL, f"{users}; {base_url}/models: {type(exc).__name__}: {exc}", "is it running?")
    models = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict)]
    return Check(label, OK, f"{users}; {base_url} answers its models list ({len(models)} model(s))")


def check_offline_models(agents: list[str]) -> Check:
    """Load what the offline stand-ins run on: Piper's voice, PocketSphinx, Silero VAD."""
    started = time.monotonic()
    try:
        from agents_app.providers import piper, sphinx
        from agents_app.providers.factory import load_vad

        piper.load_voice()
        sphinx.decode_pcm(b"\0" * 3200)  # 100 ms of silence through the real decoder
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
        f"used by {', '.join(agents)}; Piper, PocketSphinx and Silero VAD load ({time.monotonic() - started:.1f} s)",
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
