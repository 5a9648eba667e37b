"""A local HTTP double of a LiveKit server's Twirp API (agent dispatch, rooms, participants).

The real livekit-api client makes the calls; the double checks each request's JWT with
livekit-api's TokenVerifier and the configured key/secret, as a LiveKit server would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import jwt
import pytest
from aiohttp import web
from django.test import override_settings
from livekit.api import TokenVerifier
from livekit.protocol.agent_dispatch import AgentDispatch, CreateAgentDispatchRequest
from livekit.protocol.room import (
    DeleteRoomRequest,
    DeleteRoomResponse,
    RemoveParticipantResponse,
    RoomParticipantIdentity,
)

KEY = "APIdoubleKey"
SECRET = "double-secret-0123456789-abcdefghijklmnop"
AGENT_NAME = "test-voice-agent"


@dataclass
class LiveKitDouble:
    """Answers CreateDispatch and DeleteRoom like a LiveKit server; refuses bad signatures."""

    fail_with: int | None = None
    dispatches: list[CreateAgentDispatchRequest] = field(default_factory=list)
    deleted_rooms: list[str] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    rejected: int = 0
    port: int = 0

    def _authorized(self, request: web.Request, room: str | None) -> bool:
        """Dispatch needs room_admin on the room (as LiveKit checks); DeleteRoom needs room_create."""
        header = request.headers.get("Authorization", "")
        try:
            claims = TokenVerifier(KEY, SECRET).verify(header.removeprefix("Bearer "))
        except jwt.PyJWTError:
            return False
        if claims.video is None:
            return False
        if room is None:
            return bool(claims.video.room_create)
        return bool(claims.video.room_admin and claims.video.room == room)

    async def create_dispatch(self, request: web.Request) -> web.Response:
        req = CreateAgentDispatchRequest.FromString(await request.read())
        if not self._authorized(request, req.room):
            self.rejected += 1
            return web.json_response({"code": "unauthenticated", "msg": "invalid token"}, status=401)
        if self.fail_with:
            return web.json_response({"code": "internal", "msg": "boom"}, status=self.fail_with)
        self.dispatches.append(req)
        reply = AgentDispatch(
            id=f"AD_{len(self.dispatches)}", agent_name=req.agent_name, room=req.room, metadata=req.metadata
        )
        return web.Response(body=reply.SerializeToString(), content_type="application/protobuf")

    async def remove_participant(self, request: web.Request) -> web.Response:
        req = RoomParticipantIdentity.FromString(await request.read())
        if not self._authorized(request, req.room):
            self.rejected += 1
            return web.json_response({"code": "unauthenticated", "msg": "invalid token"}, status=401)
        self.removed.append((req.room, req.identity))
        return web.Response(body=RemoveParticipantResponse().SerializeToString(), content_type="application/protobuf")

    async def delete_room(self, request: web.Request) -> web.Response:
        req = DeleteRoomRequest.FromString(await request.read())
        if not self._authorized(request, None):
            self.rejected += 1
            return web.json_response({"code": "unauthenticated", "msg": "invalid token"}, status=401)
        self.deleted_rooms.append(req.room)
        return web.Response(body=DeleteRoomResponse().SerializeToString(), content_type="application/protobuf")


@pytest.fixture
def livekit_double() -> Iterator[LiveKitDouble]:
    double = LiveKitDouble()
    app = web.Application()
    app.router.add_post("/twirp/livekit.AgentDispatchService/CreateDispatch", double.create_dispatch)
    app.router.add_post("/twirp/livekit.RoomService/DeleteRoom", double.delete_room)
    app.router.add_post("/twirp/livekit.RoomService/RemoveParticipant", double.remove_participant)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        double.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        with override_settings(
            LIVEKIT_URL=f"ws://127.0.0.1:{double.port}",
            LIVEKIT_LOCAL_MODE=False,
            LIVEKIT_API_KEY=KEY,
            LIVEKIT_API_SECRET=SECRET,
            LIVEKIT_AGENT_NAME=AGENT_NAME,
        ):
            yield double
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(autouse=True)
def _loopback_outbound(settings):
    """The report-webhook receivers of these tests listen on 127.0.0.1, which the platform
    refuses by default (voiceplatform/outbound.py): admit loopback, as an operator would."""
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
