"""`manage.py doctor`: is this deployment wired for a call? One check per piece.

Each check returns a `Check`: ok, warn (works, but not as it should in production) or
fail (a call needs this and it is broken), what it saw, and what to do. Checks read
through the apps' selectors and the LiveKit server API (sessions_app/livekit_server.py);
they change nothing except the LiveKit probe room, which they delete.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from voiceplatform.logging import redact

OK, WARN, FAIL = "ok", "warn", "fail"
HTTP_TIMEOUT_S = 5.0
# A webhook older than this, while sessions were opened after it, suggests the server's
# webhook no longer reaches the platform.
WEBHOOK_QUIET_AFTER = timedelta(minutes=10)
# How long the probe room's own webhooks may take to arrive.
WEBHOOK_WAIT_S = 5.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        # What a check saw can carry a credential (a Redis URL's password, a driver's error
        # text): it goes through the same redaction as every log line.
        self.detail = redact(self.detail)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# --- database, Redis, Celery, settings ---------------------------------------------------


def check_database() -> Check:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # any driver error: unreachable, refused, bad name
        return Check("database", FAIL, f"{connection.vendor}: {type(exc).__name__}: {exc}", "check DATABASE_URL")
    if pending:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:3])
        more = f" and {len(pending) - 3} more" if len(pending) > 3 else ""
        return Check(
            "database", FAIL, f"{len(pending)} migration(s) not applied: {names}{more}", "run `manage.py migrate`"
        )
    applied = len(executor.loader.applied_migrations)
    return Check("database", OK, f"{connection.vendor}, reachable, migrated ({applied} migrations applied)")


def check_redis() -> Check:
    from voiceplatform.health import redis_problem

    which = (
        f"embedded ({settings.REDIS_URL}; set REDIS_URL for production)"
        if settings.EMBEDDED_REDIS
        else settings.REDIS_URL
    )
    error = redis_problem()
    if error:
        return Check(
            "redis",
            FAIL,
            f"{which}: {error}",
            "start Redis or fix REDIS_URL: the channel layer, Celery and the rate limits need it",
        )
    return Check("redis", OK, f"{which} answers")


def check_celery(redis_ok: bool) -> Check:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return Check(
            "celery", WARN, "CELERY_TASK_ALWAYS_EAGER: tasks run inside the web process", "unset it in production"
        )
    if not redis_ok:
        return Check("celery", FAIL, "not asked: Redis (its broker) is unreachable", "fix Redis first")
    from voiceplatform.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=HTTP_TIMEOUT_S)
            replies = app.control.ping(timeout=2.0, connection=conn)
    except Exception as exc:
        return Check("celery", FAIL, f"ping failed: {type(exc).__name__}: {exc}", "check REDIS_URL")
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return Check(
            "celery",
            FAIL,
            "no worker answered a ping within 2 s",
            "start `celery -A voiceplatform worker -B`: webhooks, reports and the session reaper run there",
        )
    return Check("celery", OK, f"{len(workers)} worker(s) answered: {', '.join(workers)}")


def check_production_settings() -> Check:
    from django.core import checks

    unsafe = []
    if settings.DEBUG:
        unsafe.append("DJANGO_DEBUG is on")
    if settings.DEV_DEFAULTS:
        unsafe.append("VOICE_DEV_DEFAULTS is on")
    if settings.SECRET_KEY.startswith("dev-only-"):
        unsafe.append("DJANGO_SECRET_KEY is the development key")
    if settings.AGENT_FAULT_INJECTION:
        unsafe.append("AGENT_FAULT_INJECTION is on (staff can crash calls)")
    if not settings.VOICE_HTTPS:
        unsafe.append("VOICE_HTTPS is off (cookies sent over plain HTTP)")
    if not (settings.METRICS_TOKEN or settings.METRICS_ALLOWED_NETWORKS):
        unsafe.append("/metrics has no METRICS_TOKEN or METRICS_ALLOWED_NETWORKS")
    if settings.API_DOCS_PUBLIC:
        unsafe.append("API_DOCS_PUBLIC is on")
    deploy = [
        m.id
        for m in checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
        if not m.is_silenced()
    ]
    if deploy:
        unsafe.append(f"Django's deploy checks: {', '.join(sorted(set(deploy)))}")
    if unsafe:
        return Check(
            "production settings",
            WARN,
            "; ".join(unsafe),
            "fine for a demo; for production see docs/configuration.md and `manage.py check --deploy`",
        )
    return Check("production settings", OK, "no development defaults, HTTPS on, Django's deploy checks pass")


# --- LiveKit ----------------------------------------------------------------------------


def check_livekit(*, probe_timeout: float) -> list[Check]:
    if settings.LIVEKIT_LOCAL_MODE:
        return [_check_local_agent_host()]
    return asyncio.run(_livekit_checks(probe_timeout))


def _check_local_agent_host() -> Check:
    host, port = settings.LOCAL_AGENT_HOST, settings.LOCAL_AGENT_PORT
    mode = "local transport (LIVEKIT_URL unset): simulated callers only, browsers cannot call /call/"
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        return Check(
            "agent worker",
            FAIL,
            f"{mode}; nothing accepts on {host}:{port} ({exc})",
            "start `manage.py runagent start`",
        )
    return Check("agent worker", OK, f"{mode}; the local agent host accepts on {host}:{port}")


async def _livekit_checks(probe_timeout: float) -> list[Check]:
    from sessions_app import livekit_server

    found: list[Check] = []
    answers, detail = await livekit_server.server_answers_async()
    found.append(
        Check("livekit server", OK if answers else FAIL, detail, "" if answers else "start it or fix LIVEKIT_URL")
    )
    accepted, detail = await livekit_server.credentials_accepted_async() if answers else (False, "not asked")
    found.append(
        Check(
            "livekit credentials",
            OK if accepted else FAIL,
            f"LIVEKIT_API_KEY {settings.LIVEKIT_API_KEY!r}: {detail}",
            "" if accepted else "LIVEKIT_API_KEY/LIVEKIT_API_SECRET must match a key pair in the server's `keys`",
        )
    )
    if not accepted:
        found.append(Check("agent worker", FAIL, "not probed: the server API is not usable", "fix the lines above"))
        found.append(await asyncio.to_thread(_check_webhooks, probe_room=""))
        return found
    room = f"doctor-probe-{secrets.token_hex(4)}"
    joined, detail = await livekit_server.agent_probe_async(room=room, timeout=probe_timeout)
    fix = "" if joined else "start `manage.py runagent start` with the same LIVEKIT_URL, keys and LIVEKIT_AGENT_NAME"
    found.append(Check("agent worker", OK if joined else FAIL, f"{settings.LIVEKIT_AGENT_NAME!r}: {detail}", fix))
    found.append(await asyncio.to_thread(_check_webhooks, probe_room=room))
    return found


def _check_webhooks(*, probe_room: str) -> Check:
    """Did the probe room's own events (room started, agent joined, room finished) come
    back as signed webhooks? Without a probe: when did the last webhook arrive?"""
    try:
        return _webhooks_seen(probe_room)
    except Exception as exc:  # the database check above says what is wrong with it
        return Check(
            "livekit webhooks", FAIL, f"could not read received webhooks: {type(exc).__name__}", "fix the database"
        )


def _webhooks_seen(probe_room: str) -> Check:
    from sessions_app.selectors import sessions_opened_since, webhook_latest_received, webhook_received_for_room
    from voiceplatform.livekit_dev import WEBHOOK_PATH

    expects = f"POST <this site>{WEBHOOK_PATH}, signed with LIVEKIT_API_KEY {settings.LIVEKIT_API_KEY!r}"
    fix = f"add the platform's URL ending in {WEBHOOK_PATH} to the server's webhook.urls (same api_key)"
    if probe_room:
        deadline = time.monotonic() + WEBHOOK_WAIT_S
        while time.monotonic() < deadline:
            events = webhook_received_for_room(probe_room)
            if events:
                return Check(
                    "livekit webhooks", OK, f"{expects}; the probe room's events arrived ({', '.join(events)})"
                )
            time.sleep(0.25)
    latest = webhook_latest_received()
    probe = f"the probe room's events did not arrive within {WEBHOOK_WAIT_S:.0f} s; " if probe_room else ""
    if latest is None:
        return Check("livekit webhooks", WARN, f"{expects}; {probe}none ever received", fix)
    age = timezone.now() - latest
    ago = f"{int(age.total_seconds() // 60)} min ago" if age >= timedelta(minutes=1) else "under a minute ago"
    if probe or (age > WEBHOOK_QUIET_AFTER and sessions_opened_since(latest + WEBHOOK_QUIET_AFTER)):
        return Check("livekit webhooks", WARN, f"{expects}; {probe}the last one arrived {ago}", fix)
    return Check("livekit webhooks", OK, f"{expects}; the last one arrived {ago}")


# --- agents: prompts, models, tools ----------------------------------------------------


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


def _providers_in_use() -> tuple[dict[str, list[str]], list[str]]:
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


# --- running them -----------------------------------------------------------------------


def run_checks(*, probe_timeout: float = 20.0) -> Iterator[Check]:
    """Every check, in the order a call needs them; yields as each finishes."""
    database = check_database()
    yield database
    redis_check = check_redis()
    yield redis_check
    yield check_celery(redis_check.status == OK)
    yield from check_livekit(probe_timeout=probe_timeout)
    if database.status != OK:
        yield Check("agents", FAIL, "not checked: the database is not usable", "fix the database first")
    else:
        yield from check_prompts()
        endpoints, offline = _providers_in_use()
        for name, agents in sorted(endpoints.items()):
            yield check_openai_endpoint(name, agents)
        if offline:
            yield check_offline_models(offline)
        yield from check_tool_secrets()
    yield check_production_settings()


def summary(checks: list[Check]) -> str:
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL)}
    verdict = "broken: a call needs what failed" if counts[FAIL] else "ready for calls"
    return f"{verdict} ({counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed)"


def format_row(check: Check, *, width: int = 24) -> str:
    line = f"{check.name:<{width}} {check.status.upper():<6} {check.detail}"
    if check.fix and check.status != OK:
        line += f"\n{'':<{width}} {'':<6} → {check.fix}"
    return line


def collect(*, probe_timeout: float = 20.0, on_check: Callable[[Check], Any] | None = None) -> list[Check]:
    checks = []
    for check in run_checks(probe_timeout=probe_timeout):
        checks.append(check)
        if on_check is not None:
            on_check(check)
    return checks
