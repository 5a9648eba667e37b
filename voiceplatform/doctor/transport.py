"""Doctor checks of how calls reach the agent: the LiveKit server, its credentials, an agent
worker that joins a probe room, and the server's webhooks back to the platform (through
sessions_app/livekit_server.py); without LiveKit, the local agent host."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from voiceplatform.doctor.base import FAIL, OK, WARN, Check

# A webhook older than this, while sessions were opened after it, suggests the server's
# webhook no longer reaches the platform.
WEBHOOK_QUIET_AFTER = timedelta(minutes=10)
# How long the probe room's own webhooks may take to arrive.
WEBHOOK_WAIT_S = 5.0


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
    found.append(await _check_phone_lines())
    found.append(await _check_sip_service())
    return found


async def _check_sip_service() -> Check:
    """LiveKit's SIP service answers its health endpoint (LIVEKIT_SIP_HEALTH_URL): without
    it, calls to the phone lines the server holds reach nobody, and placed calls fail."""
    import aiohttp

    url = settings.LIVEKIT_SIP_HEALTH_URL
    if not url:
        lines = await asyncio.to_thread(_active_phone_lines)
        detail = "not checked: LIVEKIT_SIP_HEALTH_URL is unset"
        if not lines:
            return Check("sip service", OK, detail + " (no active phone lines)")
        return Check("sip service", WARN, detail, "set it to the SIP service's health_port URL (docs/telephony.md)")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, http.get(url) as response:
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check(
            "sip service", FAIL, f"{url} does not answer ({type(exc).__name__})", "start LiveKit's SIP service"
        )
    if status == 200:
        return Check("sip service", OK, f"{url} answers 200: connected to the server's Redis, taking calls")
    if status == 429:
        fix = "more CPU, or a higher max_cpu_utilization in its config"
        return Check("sip service", WARN, f"{url} answers 429: over its CPU limit, it refuses new calls", fix)
    return Check("sip service", FAIL, f"{url} answers {status}", "see the SIP service's log")


def _active_phone_lines() -> list:
    from django.db import connection

    from agents_app.models import PhoneLine

    try:
        return list(PhoneLine.objects.filter(active=True).order_by("number"))
    finally:
        connection.close()  # a thread of its own: no connection is left behind


async def _check_phone_lines() -> Check:
    """The active phone lines are on the server as the platform made them (docs/telephony.md).

    The server's API does not say whether a SIP service process is attached to it; this
    checks that the server's SIP API answers and holds each line's trunk and number.
    """
    from sessions_app import livekit_server

    lines = await asyncio.to_thread(_active_phone_lines)
    try:
        trunks, _ = await livekit_server.sip_lines_list_async()
    except livekit_server.LiveKitServerError as exc:
        if not lines:
            return Check("phone lines", OK, f"none; the server's SIP API is not available ({exc})")
        # A warning: calls over WebRTC are unaffected, and a demo without `make livekit-sip` has its line.
        fix = "give livekit-server a `redis:` section and run LiveKit's SIP service (docs/telephony.md)"
        return Check("phone lines", WARN, f"{len(lines)} active but no phone call can arrive: {exc}", fix)
    numbers = {trunk.sip_trunk_id: set(trunk.numbers) for trunk in trunks}
    missing = [line.number for line in lines if line.number not in numbers.get(line.livekit_trunk_id, set())]
    missing += [
        f"{line.number} (outbound)"
        for line in lines
        if line.places_calls and line.number not in numbers.get(line.livekit_outbound_trunk_id, set())
    ]
    if missing:
        return Check(
            "phone lines", FAIL, f"not on the server: {', '.join(missing)}", "run `manage.py phone_lines --sync`"
        )
    if not lines:
        return Check("phone lines", OK, f"none (the server's SIP API answers; {len(trunks)} trunk(s))")
    live = ", ".join(line.number for line in lines)
    return Check("phone lines", OK, f"{len(lines)} live on the SIP service: {live}")


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
