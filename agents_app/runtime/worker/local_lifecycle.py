"""The local agent host's calls into the session lifecycle: who may join (the caller's
LiveKit token, its room's session), and the joins and leaves of the caller and of each
local job, through the same services the LiveKit webhooks call (sessions_app/lifecycle.py).

The ORM work is synchronous; the host awaits it in a thread (`database_sync_to_async`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

logger = logging.getLogger(__name__)

# How long a caller's join waits out a database outage before it is refused.
JOIN_DATABASE_WAIT_SECONDS = 30.0


class HelloRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def verify_token(token: str) -> str:
    """The room the token grants, or HelloRejected (bad signature, expired, no join)."""
    from livekit.api import TokenVerifier

    if not token:
        raise HelloRejected("invalid_token", "hello carries no token")
    try:
        claims = TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)
    except Exception as exc:  # jwt raises several types; all mean "not a valid token here"
        raise HelloRejected("invalid_token", f"token rejected: {exc}") from exc
    video = claims.video
    if video is None or not video.room_join or not video.room:
        raise HelloRejected("forbidden", "the token does not grant joining a room")
    return str(video.room)


def _session_for_room(room: str) -> str:
    from sessions_app.models import FINAL_STATES, VoiceSession

    session = VoiceSession.objects.filter(room_name=room).only("id", "state").first()
    if session is None:
        raise HelloRejected("unknown_room", f"no voice session for room {room!r}")
    if session.state in FINAL_STATES:
        raise HelloRejected("session_final", f"session {session.id} is {session.state}")
    return str(session.id)


async def caller_joined(room: str, connection: str) -> dict[str, Any]:
    """The session lifecycle's caller join (the same service the LiveKit webhooks call).

    A caller who connects while the database cannot be reached (a PostgreSQL restart) waits
    for it, retried with backoff for up to JOIN_DATABASE_WAIT_SECONDS; then the hello is
    refused with `database_unavailable` instead of a dropped connection.
    """
    from django.db import InterfaceError, OperationalError

    deadline = time.monotonic() + JOIN_DATABASE_WAIT_SECONDS
    delay = 0.5
    while True:
        try:
            return await _caller_joined(room, connection)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise HelloRejected("database_unavailable", f"the platform's database is unavailable: {exc}") from exc
            logger.warning("database unavailable while a caller joins room %s; retrying: %s", room, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)


@database_sync_to_async
def _caller_joined(room: str, connection: str) -> dict[str, Any]:
    from sessions_app.lifecycle import SessionFinal, session_caller_joined

    session_id = _session_for_room(room)
    try:
        joined = session_caller_joined(
            session_id=session_id, connection=connection, joined_at_ms=int(time.time() * 1000), source="local"
        )
    except SessionFinal as exc:
        raise HelloRejected("session_final", str(exc)) from exc
    return {"session_id": session_id, "state": joined.session.state}


@database_sync_to_async
def caller_left(session_id: str, connection: str, reason: str) -> None:
    from sessions_app.lifecycle import session_caller_left

    session_caller_left(session_id=session_id, connection=connection, reason=reason)


@database_sync_to_async
def agent_joined(session_id: str, identity: str) -> None:
    from sessions_app.lifecycle import session_agent_joined

    session_agent_joined(session_id=session_id, identity=identity, source="local")


@database_sync_to_async
def agent_left(session_id: str, identity: str, reason: str) -> bool:
    """Returns whether a new job must take over now (the lifecycle's re-dispatch rule)."""
    from sessions_app.lifecycle import session_agent_left

    return session_agent_left(session_id=session_id, identity=identity, reason=reason, source="local").redispatch
