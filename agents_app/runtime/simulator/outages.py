"""Scenario support for provider outages (issue 11).

A scenario with an `outage:` mapping gets a scripted outage server (see outage_server.py)
as the primary provider of one stage, and its own agent (`sim-<scenario>`, a copy of the
scenario's agent) whose chain is that server followed by a fallback:

    outage:
      stage: llm              # llm | tts
      script: ["500", "hang"] # the primary's answers, one per request (ok 500 429 hang cut)
      then: ok                # once the script is used up
      down_for: 0             # or: every request fails (then_failure) for this many seconds
      hang_seconds: 30
      fallback: offline       # offline | server (a second, healthy scripted server)

The agent jobs must run in this process (`--local-agent inprocess`) because the primary's
address is the process-wide OPENAI_BASE_URL. After each call the session's provider
events are read back for the summary (`failovers`, `provider_errors`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from agents_app.runtime.simulator.outage_server import ScriptedOutageServer

if TYPE_CHECKING:
    from agents_app.runtime.simulator.scenarios import Scenario

OUTAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["stage"],
    "properties": {
        "stage": {"enum": ["llm", "tts"]},
        "script": {"type": "array", "items": {"enum": ["ok", "500", "429", "hang", "cut"]}, "maxItems": 100},
        "then": {"enum": ["ok", "500", "429", "hang", "cut"]},
        "then_failure": {"enum": ["500", "429", "hang", "cut"]},
        "down_for": {"type": "number", "minimum": 0, "maximum": 600},
        "hang_seconds": {"type": "number", "minimum": 0, "maximum": 600},
        "fallback": {"enum": ["offline", "server"]},
    },
}

IMPAIRMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "jitter_ms": {"type": "number", "minimum": 0, "maximum": 1000},
        "loss": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "burst_probability": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "burst_frames": {"type": "integer", "minimum": 0, "maximum": 500},
        "seed": {"type": "integer"},
    },
}


class OutageSetupError(RuntimeError):
    pass


@dataclasses.dataclass
class OutageRun:
    servers: list[ScriptedOutageServer] = dataclasses.field(default_factory=list)
    scenarios: list[Scenario] = dataclasses.field(default_factory=list)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


SIM_BACKUP_ENDPOINT = "sim-backup"


def _sim_agent(base_slug: str, scenario: str, outage: dict[str, Any], fallback_endpoint: str) -> str:
    """Create or refresh the scenario's own agent: a copy of `base_slug` with the chain."""
    from django.db import transaction

    from agents_app.models import Agent, PromptStatus, Provider
    from agents_app.services import prompt_draft_create, prompt_publish

    base = Agent.objects.get(slug=base_slug)
    slug = f"sim-{scenario}"[:64]
    stage = outage["stage"]
    fallback = (
        {"provider": "openai", "model": "scripted-backup", "endpoint": fallback_endpoint}
        if outage.get("fallback") == "server"
        else {"provider": "offline"}
    )
    with transaction.atomic():
        agent = Agent.objects.filter(slug=slug).first()
        if agent is None:
            agent = Agent.objects.get(pk=base.pk)
            agent.pk = None
            agent.id = None
            agent.slug = slug
            agent.name = f"{base.name} ({scenario} scenario)"
            agent.save()
        setattr(agent, f"{stage}_provider", Provider.OPENAI)
        setattr(agent, f"{stage}_model", f"scripted-{stage}")
        setattr(agent, f"{stage}_fallbacks", [fallback])
        agent.active = True
        agent.save()
        if not agent.prompt_versions.filter(status=PromptStatus.PUBLISHED).exists():
            published = base.prompt_versions.get(status=PromptStatus.PUBLISHED)
            version = prompt_draft_create(
                agent=agent,
                instructions=published.instructions,
                greeting=published.greeting,
                variables=dict(published.variables or {}),
                change_note=f"copied from {base_slug} for the {scenario} scenario",
            )
            prompt_publish(version=version)
    # The agent's tools follow its slug elsewhere; a copy without tools is fine here.
    return slug


async def prepare(scenarios: list[Scenario], *, inprocess: bool, progress: Any) -> OutageRun:
    """Start the outage servers and agents the scenarios ask for."""
    from django.conf import settings

    run = OutageRun()
    outage_scenarios = [s for s in scenarios if getattr(s, "outage", None)]
    if outage_scenarios and not inprocess:
        names = ", ".join(s.name for s in outage_scenarios)
        raise OutageSetupError(f"scenario(s) {names} simulate a provider outage: run with --local-agent inprocess")
    if len(outage_scenarios) > 1:
        raise OutageSetupError("run one outage scenario at a time (they share OPENAI_BASE_URL)")
    for scenario in scenarios:
        outage = getattr(scenario, "outage", None)
        if not outage:
            run.scenarios.append(scenario)
            continue
        primary = ScriptedOutageServer(
            script=list(outage.get("script") or []),
            then=outage.get("then", "ok"),
            then_failure=outage.get("then_failure", "500"),
            down_for=float(outage.get("down_for", 0)),
            hang_seconds=float(outage.get("hang_seconds", 30)),
        )
        await primary.start()
        run.servers.append(primary)
        backup_endpoint = ""
        if outage.get("fallback") == "server":
            backup = await ScriptedOutageServer().start()
            run.servers.append(backup)
            # Like an operator would: the backup is a configured endpoint the agent names.
            backup_endpoint = SIM_BACKUP_ENDPOINT
            settings.OPENAI_ENDPOINTS = {
                **settings.OPENAI_ENDPOINTS,
                backup_endpoint: {"base_url": backup.base_url, "api_key_env": ""},
            }
        settings.OPENAI_BASE_URL = primary.base_url
        slug = await sync_to_async(_sim_agent, thread_sensitive=False)(
            scenario.agent, scenario.name, outage, backup_endpoint
        )
        progress(f"{scenario.name}: scripted outage server for {outage['stage']} at {primary.base_url}, agent {slug}")
        run.scenarios.append(dataclasses.replace(scenario, agent=slug))
    return run


def _provider_events(session_id: str) -> dict[str, list[dict[str, Any]]]:
    from django.db import connection

    from sessions_app.models import SessionEvent

    try:
        rows = list(
            SessionEvent.objects.filter(
                session_id=session_id, type__in=["provider.failover", "provider.error", "network.impairment"]
            )
            .order_by("seq")
            .values("type", "payload")
        )
    finally:
        connection.close()
    return {
        "failovers": [r["payload"] for r in rows if r["type"] == "provider.failover"],
        "provider_errors": [r["payload"] for r in rows if r["type"] == "provider.error"],
        "impairment": [r["payload"] for r in rows if r["type"] == "network.impairment"],
    }


async def provider_events(session_id: str) -> dict[str, list[dict[str, Any]]]:
    """The session's provider and network events (needs the platform's database)."""
    return await sync_to_async(_provider_events, thread_sensitive=False)(session_id)
