"""Calls to the LiveKit server API (Twirp) through livekit-api's real client.

Only used when `LIVEKIT_URL` is set. In local mode there is no server: the local agent
host starts the job itself when the caller connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
from asgiref.sync import async_to_sync
from django.conf import settings
from livekit import api

logger = logging.getLogger(__name__)

# The caller is waiting on the HTTP response; a server that does not answer in this time
# is treated as down (the session is failed rather than left without an agent).
REQUEST_TIMEOUT_S = 5.0


class LiveKitServerError(Exception):
    """The LiveKit server refused or could not be reached."""


def _client() -> api.LiveKitAPI:
    # Failover is for LiveKit Cloud region hopping; a self-hosted server has one origin.
    return api.LiveKitAPI(
        settings.LIVEKIT_URL,
        settings.LIVEKIT_API_KEY,
        settings.LIVEKIT_API_SECRET,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        failover=False,
    )


async def agent_dispatch_create_async(*, room: str, session_id: str) -> str:
    """Explicitly dispatch the platform's agent (by name) into `room`; returns the dispatch id."""
    request = api.CreateAgentDispatchRequest(
        agent_name=settings.LIVEKIT_AGENT_NAME,
        room=room,
        metadata=json.dumps({"session_id": session_id}),
    )
    lkapi = _client()
    try:
        dispatch = await lkapi.agent_dispatch.create_dispatch(request)
    except Exception as exc:  # ServerError, aiohttp errors, timeouts: all mean "no agent"
        raise LiveKitServerError(f"agent dispatch failed: {exc}") from exc
    finally:
        await lkapi.aclose()
    return dispatch.id


def agent_dispatch_create(*, room: str, session_id: str) -> str:
    return async_to_sync(agent_dispatch_create_async)(room=room, session_id=session_id)


async def room_delete_async(*, room: str) -> None:
    lkapi = _client()
    try:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
    except Exception as exc:
        raise LiveKitServerError(f"room delete failed: {exc}") from exc
    finally:
        await lkapi.aclose()


def room_delete(*, room: str) -> None:
    """Close the room so every participant (caller and agent) is disconnected."""
    async_to_sync(room_delete_async)(room=room)


async def participant_remove_async(*, room: str, identity: str) -> None:
    lkapi = _client()
    try:
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
    except Exception as exc:
        raise LiveKitServerError(f"participant remove failed: {exc}") from exc
    finally:
        await lkapi.aclose()


def participant_remove(*, room: str, identity: str) -> None:
    """Take one participant out of a room (an extra agent job for the same session)."""
    async_to_sync(participant_remove_async)(room=room, identity=identity)


# --- what `manage.py doctor` asks the server (voiceplatform/doctor/transport.py) ----------

# A dispatch with this metadata key is a probe: the worker joins and leaves at once
# (agents_app/runtime/worker/entrypoint.py), touching no session.
PROBE_METADATA_KEY = "doctor_probe"


async def server_answers_async(timeout: float = REQUEST_TIMEOUT_S) -> tuple[bool, str]:
    """Whether LIVEKIT_URL answers HTTP (a LiveKit server says "OK" on `/`)."""
    url = settings.LIVEKIT_URL.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/") + "/"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url, allow_redirects=False) as response:
                return response.status == 200, f"HTTP {response.status} from {url}"
    except Exception as exc:  # refused, DNS, TLS, timeout
        return False, f"{url} did not answer: {type(exc).__name__}: {exc}"


async def credentials_accepted_async() -> tuple[bool, str]:
    """Whether the server accepts LIVEKIT_API_KEY/LIVEKIT_API_SECRET (a ListRooms call)."""
    lkapi = _client()
    try:
        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
    except api.TwirpError as exc:
        return False, f"the server refused the call: {exc.code} (HTTP {exc.status}): {exc.message}"
    except Exception as exc:
        return False, f"the server API did not answer: {type(exc).__name__}: {exc}"
    finally:
        await lkapi.aclose()
    return True, f"accepted (ListRooms: {len(rooms.rooms)} room(s) open)"


async def agent_probe_async(*, room: str, timeout: float) -> tuple[bool, str]:
    """Dispatch LIVEKIT_AGENT_NAME into a room of its own and wait for an agent to join.

    The server's API does not list workers, so this is the dispatch a call makes, with
    metadata that tells the worker it is a probe (agents_app/runtime/worker/entrypoint.py): the
    job joins and leaves, touching no session. The room is deleted in every case.
    """
    import time

    lkapi = _client()
    started = time.monotonic()
    try:
        await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=settings.LIVEKIT_AGENT_NAME, room=room, metadata=json.dumps({PROBE_METADATA_KEY: True})
            )
        )
        while time.monotonic() - started < timeout:
            answer = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            agents = [p for p in answer.participants if p.kind == api.ParticipantInfo.Kind.AGENT]
            if agents:
                return (
                    True,
                    f"a worker joined the probe room as {agents[0].identity} in {time.monotonic() - started:.1f} s",
                )
            await asyncio.sleep(0.5)
        return False, f"no worker took a dispatch for {settings.LIVEKIT_AGENT_NAME!r} within {timeout:.0f} s"
    except Exception as exc:
        return False, f"the probe dispatch failed: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
        await lkapi.aclose()
