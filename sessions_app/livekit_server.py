"""Calls to the LiveKit server API (Twirp) through livekit-api's real client.

Only used when `LIVEKIT_URL` is set. In local mode there is no server: the local agent
host starts the job itself when the caller connects.
"""

from __future__ import annotations

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
