"""bench/voice_to_voice.py over a real LiveKit server (`--transport livekit`).

The same conversation as bench/voice_calls.py, with the caller and the agent in a LiveKit
room instead of the local transport: the caller is the simulator's `LiveKitTransport` (the
livekit rtc SDK over WebRTC) with a continuous microphone (20 ms frames: the line's, else
silence), timed by the same `HeardMeter`; the agent joins the room as an agent participant
in this process (`fake_job_context(room=…)`, as a LiveKit job would hold it), either

- bare: a livekit-agents `AgentSession` started on the room (RoomIO) with the same
  providers and options, or
- platform: the platform's own job runtime (`JobRuntime`, what `entrypoint` runs for a
  LiveKit job: the session claimed, the turns recorded, the interrupt RPC registered).

Needs a non-loopback address (WebRTC gathers no loopback candidates): run inside a network
namespace (voiceplatform/netns.py), where `livekit_server()` starts the server built into
var/bin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import free_port, stop
from bench.voice_calls import CallerEar, RunResult, bare_stages, platform_result
from voiceplatform import livekit_dev

FRAME_S = 0.02  # the caller's microphone frames, as the simulated caller's (caller.FRAME_SECONDS)


@contextlib.contextmanager
def livekit_server(redis: livekit_dev.RedisConfig | None = None) -> Iterator[livekit_dev.ServerConfig]:
    """The LiveKit server of this machine (`make livekit-server`) on free ports, for one run;
    with `redis` (where LiveKit's SIP service meets it, bench/phone_heard.py) its `redis:` section."""
    binary = livekit_dev.server_binary()
    if binary is None:
        raise RuntimeError("no livekit-server (`make livekit-server` builds it; it needs Go)")
    data_dir = Path(tempfile.mkdtemp(prefix="vp-bench-livekit-"))
    config = livekit_dev.ServerConfig(
        api_key="benchkey",
        api_secret=secrets.token_urlsafe(36),
        webhook_url="http://127.0.0.1:9/unused",  # the server wants one; the benchmark needs none
        port=free_port(),
        udp_port=free_port(),
        log_level="warn",
        redis=redis,
    )
    log = open(data_dir / "livekit-server.log", "w")
    proc = subprocess.Popen(
        livekit_dev.server_command(binary, livekit_dev.render_config(config, data_dir)),
        env=livekit_dev.server_env(config),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if not livekit_dev.wait_ready(config.port, 30, proc):
            raise RuntimeError(f"the LiveKit server did not start: {(data_dir / 'livekit-server.log').read_text()}")
        yield config
    finally:
        stop(proc, grace=15)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


class RoomEar(CallerEar):
    """The scripted caller in a LiveKit room: a microphone that never stops (silence between
    lines, as a real one), each frame timed by the meter as it is sent."""

    def __init__(self, utterances: list[tuple[Any, int]]) -> None:
        from agents_app.runtime.simulator.livekit_transport import LiveKitTransport

        super().__init__(utterances)
        self.notes: list[str] = []
        self.transport = LiveKitTransport(on_agent_audio=self.meter.agent_audio, on_note=self.notes.append)
        self._speech: collections.deque[np.ndarray] = collections.deque()
        self._said = asyncio.Event()
        self._rate = utterances[0][1] if utterances else 22050

    async def microphone(self) -> None:
        """Paced 20 ms frames: the queued line's, else silence.

        The rtc SDK's AudioSource queues what is captured (up to 1 s) and sends it in real
        time, so frames sent in a burst (the loop late, the track not yet flowing) would
        stay queued for the rest of the call, delaying every line by as much. A microphone
        has no such queue: a silence frame is skipped while more than a frame is queued.
        """
        frame = int(self._rate * FRAME_S)
        silence = np.zeros(frame, dtype=np.int16)
        clock = time.monotonic()
        while True:
            if self._speech:
                chunk = self._speech.popleft()
                self.meter.caller_frame(chunk, self._rate)
                if not self._speech:
                    self._said.set()
            else:
                chunk = silence
            if chunk is not silence or self.transport.queued_seconds() <= FRAME_S:
                await self.transport.send_audio(chunk, self._rate)
            clock += len(chunk) / self._rate
            await asyncio.sleep(max(0.0, clock - time.monotonic()))

    async def say(self, call: Any, audio: Any, rate: int) -> None:
        assert rate == self._rate, "every line at the rate of the first"
        frame = int(rate * FRAME_S)
        self._said.clear()
        self._speech.extend(audio[i : i + frame] for i in range(0, len(audio), frame))
        await self._said.wait()

    async def agent_turn(self, call: Any) -> None:
        await self.transport.wait_speaking(True, 60)
        await self.transport.wait_speaking(False, 60)


def _agent_token(server: livekit_dev.ServerConfig, room: str, identity: str) -> str:
    from livekit import api

    return (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                agent=True,
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
                can_update_own_metadata=True,  # the `lk.agent.state` attribute the caller follows
            )
        )
        .with_ttl(dt.timedelta(minutes=30))
        .to_jwt()
    )


@contextlib.asynccontextmanager
async def _call(server: livekit_dev.ServerConfig, room: str, config: Any, utterances: list[tuple[Any, int]]):
    """The room (made through the server API), the caller in it with a platform-minted
    token, and an agent participant's connected `rtc.Room`; everything left at the end."""
    from asgiref.sync import sync_to_async
    from livekit import api, rtc

    from sessions_app.tokens import CALLER_IDENTITY_PREFIX, caller_token_mint

    lkapi = api.LiveKitAPI(url=f"http://127.0.0.1:{server.port}", api_key=server.api_key, api_secret=server.api_secret)
    await lkapi.room.create_room(api.CreateRoomRequest(name=room))
    ear = RoomEar(utterances)
    agent_room = rtc.Room()
    mouth: asyncio.Task[Any] | None = None
    try:
        caller_id = config.caller_identity.removeprefix(CALLER_IDENTITY_PREFIX)  # the session's caller
        minted = await sync_to_async(caller_token_mint)(room=room, caller_id=caller_id)
        await ear.transport.connect(server.url, minted.token)
        mouth = asyncio.create_task(ear.microphone(), name="bench-caller-microphone")
        await agent_room.connect(server.url, _agent_token(server, room, f"agent-bench-{secrets.token_hex(4)}"))
        yield ear, agent_room
    finally:
        if mouth is not None:
            mouth.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mouth
        await ear.transport.hangup()
        await agent_room.disconnect()
        with contextlib.suppress(Exception):
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
        await lkapi.aclose()


async def run_bare_livekit(
    server: livekit_dev.ServerConfig, config: Any, utterances: list[tuple[Any, int]], room: str
) -> RunResult:
    """A bare livekit-agents AgentSession on the room, the same providers and options; its
    room input keeps livekit-agents' default 50 ms frames (the platform's are
    ROOM_AUDIO_INPUT_FRAME_MS), so the comparison shows what that setting buys."""
    from livekit.agents import Agent, AgentSession, room_io
    from livekit.agents.testing import fake_job_context

    from agents_app.runtime.providers.factory import build_providers, load_vad
    from agents_app.runtime.worker import turn_taking
    from agents_app.runtime.worker.platform_agent import session_options

    providers = build_providers(config.agent)
    stages, on_item = bare_stages()
    async with _call(server, room, config, utterances) as (ear, agent_room):
        with fake_job_context(room=agent_room, job_id="bench-bare"):
            session = AgentSession(
                stt=providers.stt,
                llm=providers.llm,
                tts=providers.tts,
                vad=load_vad(turn_taking.vad_silence(config.agent)),
                **session_options(agent=config.agent),
            )
            session.on("conversation_item_added", on_item)
            options = room_io.RoomOptions(participant_identity=config.caller_identity, close_on_disconnect=False)
            await session.start(
                agent=Agent(instructions=config.instructions), room=agent_room, room_options=options, record=False
            )
            session.say(config.greeting)
            await ear.converse(None)
            await session.aclose()
    return RunResult(heard_ms=ear.gaps_ms, stages=stages)


async def run_platform_livekit(
    server: livekit_dev.ServerConfig, config: Any, utterances: list[tuple[Any, int]], room: str
) -> RunResult:
    """The platform's job runtime on the room, as `entrypoint` runs it for a LiveKit job."""
    from livekit.agents.testing import fake_job_context

    from agents_app.runtime.worker.entrypoint import JobRuntime

    async with _call(server, room, config, utterances) as (ear, agent_room):
        metadata = json.dumps({"session_id": config.session_id})
        with fake_job_context(room=agent_room, job_id="bench-platform", job_metadata=metadata) as ctx:
            runtime = JobRuntime(ctx=ctx, config=config, call=None)
            if not await runtime.start():
                raise RuntimeError(f"the platform's job would not serve session {config.session_id}")
            await ear.converse(None)
            await runtime.aclose()
    return platform_result(ear, runtime)
