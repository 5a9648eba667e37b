"""Calls to the LiveKit server API (Twirp) through livekit-api's real client.

Only used when `LIVEKIT_URL` is set. In local mode there is no server: the local agent
host starts the job itself when the caller connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

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


def room_delete_quietly(*, room: str) -> None:
    """Best effort: a room the platform is done with (LiveKit closes empty rooms itself)."""
    try:
        room_delete(room=room)
    except LiveKitServerError:
        logger.warning("could not delete room %s", room, exc_info=True)


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


# --- phone lines: LiveKit's SIP service (docs/telephony.md) --------------------------------

# Metadata on every trunk and dispatch rule the platform makes, so its own can be told
# from an operator's (`manage.py phone_lines --sync` deletes only these when orphaned).
PHONE_LINE_MARK = "voiceplatform.phone_line"
# The job metadata key a phone line's dispatch rule gives the agent (entrypoint.py).
PHONE_LINE_METADATA_KEY = "phone_line"


@dataclass(frozen=True)
class SipLineSpec:
    """What one phone line is on the server: an inbound trunk and its dispatch rule."""

    line_id: int
    number: str
    allowed_addresses: tuple[str, ...]
    auth_username: str
    auth_password: str
    room_prefix: str
    trunk_id: str = ""
    rule_id: str = ""
    # Placing calls from the number: an outbound trunk to this SIP server ("" for none).
    outbound_address: str = ""
    outbound_username: str = ""
    outbound_password: str = ""
    outbound_trunk_id: str = ""

    def outbound_trunk(self) -> api.SIPOutboundTrunkInfo:
        return api.SIPOutboundTrunkInfo(
            name=f"phone line {self.number} (outbound)",
            metadata=json.dumps({PHONE_LINE_MARK: self.line_id}),
            address=self.outbound_address,
            numbers=[self.number],
            auth_username=self.outbound_username,
            auth_password=self.outbound_password,
        )

    def trunk(self) -> api.SIPInboundTrunkInfo:
        return api.SIPInboundTrunkInfo(
            name=f"phone line {self.number}",
            metadata=json.dumps({PHONE_LINE_MARK: self.line_id}),
            numbers=[self.number],
            allowed_addresses=list(self.allowed_addresses),
            auth_username=self.auth_username,
            auth_password=self.auth_password,
        )

    def rule(self, trunk_id: str) -> api.SIPDispatchRuleInfo:
        return api.SIPDispatchRuleInfo(
            name=f"phone line {self.number}",
            metadata=json.dumps({PHONE_LINE_MARK: self.line_id}),
            trunk_ids=[trunk_id],
            # One room per call, named <prefix>_<caller's number>_<random>.
            rule=api.SIPDispatchRule(
                dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=self.room_prefix)
            ),
            # The server dispatches the platform's agent as it makes the room.
            room_config=api.RoomConfiguration(
                agents=[
                    api.RoomAgentDispatch(
                        agent_name=settings.LIVEKIT_AGENT_NAME,
                        metadata=json.dumps({PHONE_LINE_METADATA_KEY: self.line_id}),
                    )
                ]
            ),
        )


def _twirp_message(exc: Exception) -> str:
    if isinstance(exc, api.TwirpError):
        return f"{exc.code} (HTTP {exc.status}): {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _not_found(exc: Exception) -> bool:
    return isinstance(exc, api.TwirpError) and (exc.status == 404 or exc.code == "not_found")


async def _replace_or_create(known_id: str, replace: Any, create: Any) -> Any:
    """`replace()` when the server should hold `known_id`, else (or when it no longer
    does: a server whose Redis was emptied) `create()`; the server's answer."""
    if known_id:
        try:
            return await replace()
        except Exception as exc:
            if not _not_found(exc):
                raise
    return await create()


class SipLineIds(NamedTuple):
    trunk_id: str
    rule_id: str
    outbound_trunk_id: str = ""


async def sip_line_apply_async(spec: SipLineSpec) -> SipLineIds:
    """Create or replace the line's inbound trunk and dispatch rule, and its outbound trunk
    when it has an outbound SIP server (deleted when it no longer has); returns the ids."""
    lkapi = _client()
    try:
        outbound_id = ""
        if spec.outbound_address:
            outbound = await _replace_or_create(
                spec.outbound_trunk_id,
                lambda: lkapi.sip.update_outbound_trunk(spec.outbound_trunk_id, spec.outbound_trunk()),
                lambda: lkapi.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=spec.outbound_trunk())),
            )
            outbound_id = outbound.sip_trunk_id
        elif spec.outbound_trunk_id:
            await _delete_trunk(lkapi, spec.outbound_trunk_id)
        trunk = await _replace_or_create(
            spec.trunk_id,
            lambda: lkapi.sip.update_inbound_trunk(spec.trunk_id, spec.trunk()),
            lambda: lkapi.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=spec.trunk())),
        )
        rule = await _replace_or_create(
            spec.rule_id,
            lambda: lkapi.sip.update_dispatch_rule(spec.rule_id, spec.rule(trunk.sip_trunk_id)),
            lambda: lkapi.sip.create_dispatch_rule(
                api.CreateSIPDispatchRuleRequest(dispatch_rule=spec.rule(trunk.sip_trunk_id))
            ),
        )
        return SipLineIds(trunk.sip_trunk_id, rule.sip_dispatch_rule_id, outbound_id)
    except Exception as exc:
        raise LiveKitServerError(
            f"the SIP service refused the phone line {spec.number}: {_twirp_message(exc)}"
        ) from exc
    finally:
        await lkapi.aclose()


async def _delete_trunk(lkapi: api.LiveKitAPI, trunk_id: str) -> None:
    try:
        await lkapi.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=trunk_id))
    except Exception as exc:
        if not _not_found(exc):
            raise


async def sip_line_remove_async(*, trunk_id: str, rule_id: str, outbound_trunk_id: str = "") -> None:
    """Delete a line's dispatch rule and trunks (ids the server does not know are fine)."""
    lkapi = _client()
    try:
        if rule_id:
            with contextlib.suppress(api.TwirpError):
                await lkapi.sip.delete_dispatch_rule(api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id))
        for known in (trunk_id, outbound_trunk_id):
            if known:
                await _delete_trunk(lkapi, known)
    except Exception as exc:
        raise LiveKitServerError(f"the SIP service did not delete trunk {trunk_id}: {_twirp_message(exc)}") from exc
    finally:
        await lkapi.aclose()


async def sip_lines_list_async() -> tuple[list[Any], list[api.SIPDispatchRuleInfo]]:
    """Every trunk (inbound ones first, then outbound ones) and dispatch rule on the server
    (the platform's and others')."""
    lkapi = _client()
    try:
        trunks = await lkapi.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
        outbound = await lkapi.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
        rules = await lkapi.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
    except Exception as exc:
        raise LiveKitServerError(f"the SIP service could not be listed: {_twirp_message(exc)}") from exc
    finally:
        await lkapi.aclose()
    return [*trunks.items, *outbound.items], list(rules.items)


def marked_line_id(metadata: str) -> int | None:
    """The platform's phone line id in a trunk's or rule's metadata (None: not ours)."""
    try:
        value = json.loads(metadata or "{}").get(PHONE_LINE_MARK)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def sip_line_apply(spec: SipLineSpec) -> SipLineIds:
    return async_to_sync(sip_line_apply_async)(spec)


def sip_line_remove(*, trunk_id: str, rule_id: str, outbound_trunk_id: str = "") -> None:
    async_to_sync(sip_line_remove_async)(trunk_id=trunk_id, rule_id=rule_id, outbound_trunk_id=outbound_trunk_id)


def sip_lines_list() -> tuple[list[Any], list[api.SIPDispatchRuleInfo]]:
    return async_to_sync(sip_lines_list_async)()
