"""How a simulated caller reaches the agent: the local agent host (TCP), the same host
in-process, or a real LiveKit room (livekit rtc SDK).

Every transport tells the caller when the agent speaks and hands it the agent's audio as
played, so the caller can barge in at the right moment and record what it heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np

from agents_app.worker.local_server import AgentHost
from agents_app.worker.local_wire import AudioChunk, StreamChannel, memory_channel_pair

AudioSink = Callable[[np.ndarray, int], None]
CONNECT_TIMEOUT_SECONDS = 15.0
AGENT_HOST_WAIT_SECONDS = 90.0


class TransportError(Exception):
    pass


class CallerTransport:
    """Common state: agent speaking or not, since when, and the closed flag."""

    supports_agent_restart = False
    # Whether this transport impairs the caller's audio itself (LiveKit); the local agent
    # host applies a scenario's impairment on its side instead.
    applies_impairment = False

    def __init__(self, *, on_agent_audio: AudioSink, on_note: Callable[[str], None]) -> None:
        self.on_agent_audio = on_agent_audio
        self.on_note = on_note
        self.agent_speaking = False
        self.speaking_since: float | None = None
        self.restarts = 0
        self.session_id = ""  # set by the call once the API created the session
        self.impairment: Any = None  # agents_app.worker.impairment.Impairment, when applied here
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()

    def _set_speaking(self, speaking: bool) -> None:
        if speaking == self.agent_speaking:
            return
        self.agent_speaking = speaking
        self.speaking_since = time.monotonic() if speaking else None
        self._changed.set()

    async def wait_speaking(self, speaking: bool, timeout: float) -> None:
        async def _wait() -> None:
            while self.agent_speaking != speaking:
                if self.closed.is_set():
                    raise TransportError("the connection closed while waiting for the agent")
                self._changed.clear()
                closed = asyncio.ensure_future(self.closed.wait())
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({closed, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    changed.cancel()

        await asyncio.wait_for(_wait(), timeout)

    async def connect(self, url: str, token: str) -> None:
        raise NotImplementedError

    async def send_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        raise NotImplementedError

    def recovered_by_itself(self) -> bool:
        """After a drop: the connection came back without a new token (LiveKit's SDK)."""
        return False

    async def agent_restart(self) -> None:
        raise TransportError(f"{type(self).__name__} cannot restart the agent job (local transport only)")

    async def hangup(self) -> None:
        raise NotImplementedError

    async def drop(self) -> None:
        raise NotImplementedError


class HostTransport(CallerTransport):
    """The local agent host protocol (docs/simulator.md), over TCP or in-process."""

    supports_agent_restart = True

    def __init__(self, *, host: AgentHost | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inprocess_host = host
        self._channel: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._welcome: asyncio.Future[dict[str, Any]] | None = None
        self._restarted = asyncio.Event()

    async def _open(self, url: str) -> Any:
        if self._inprocess_host is not None:
            caller_end, host_end = memory_channel_pair()
            self._inprocess_host.spawn(host_end)
            return caller_end
        parsed = urlparse(url)
        if parsed.scheme != "local" or not parsed.hostname or not parsed.port:
            raise TransportError(f"not a local agent host url: {url!r} (expected local://host:port)")
        # A host that is still loading its models refuses connections for a while (the
        # demo starts callers and the agent together): retry refusals for a bounded time.
        deadline = time.monotonic() + AGENT_HOST_WAIT_SECONDS
        noted = False
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(parsed.hostname, parsed.port), CONNECT_TIMEOUT_SECONDS
                )
                return StreamChannel(reader, writer)
            except ConnectionRefusedError as exc:
                if time.monotonic() < deadline:
                    if not noted:
                        self.on_note(f"waiting for the local agent host at {parsed.hostname}:{parsed.port}")
                        noted = True
                    await asyncio.sleep(0.5)
                    continue
                error: Exception = exc
            except (OSError, TimeoutError) as exc:
                error = exc
            raise TransportError(
                f"cannot reach the local agent host at {parsed.hostname}:{parsed.port} ({error}); "
                "is `manage.py runagent` running? (or use --local-agent inprocess)"
            ) from error

    async def connect(self, url: str, token: str) -> None:
        self.closed = asyncio.Event()
        self._set_speaking(False)
        self._channel = await self._open(url)
        await self._channel.send({"type": "hello", "token": token, "protocol": 1})
        first = await asyncio.wait_for(self._channel.recv(), CONNECT_TIMEOUT_SECONDS)
        if not isinstance(first, dict) or first.get("type") != "welcome":
            detail = first.get("message") if isinstance(first, dict) else "connection closed"
            await self._channel.close()
            raise TransportError(f"the agent host refused the call: {detail}")
        self._reader = asyncio.create_task(self._read_loop(self._channel), name="caller-reader")

    async def _read_loop(self, channel: Any) -> None:
        try:
            while True:
                message = await channel.recv()
                if message is None:
                    return
                if isinstance(message, AudioChunk):
                    self.on_agent_audio(message.samples, message.sample_rate)
                    continue
                kind = message.get("type")
                if kind == "agent.speaking":
                    self._set_speaking(bool(message.get("speaking")))
                elif kind == "agent.restarted":
                    self.restarts += 1
                    self._set_speaking(False)
                    self._restarted.set()
                elif kind == "bye":
                    self.on_note(f"agent host: {message.get('reason', 'bye')}")
                elif kind == "error":
                    self.on_note(f"agent host error {message.get('code')}: {message.get('message')}")
        finally:
            self._set_speaking(False)
            self.closed.set()
            self._changed.set()

    async def send_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        if self.closed.is_set():
            raise TransportError("the connection to the agent is closed")
        await self._channel.send(AudioChunk(pcm=np.asarray(samples, dtype=np.int16).tobytes(), sample_rate=sample_rate))

    async def agent_restart(self) -> None:
        self._restarted.clear()
        await self._channel.send({"type": "control", "action": "agent-restart"})
        await asyncio.wait_for(self._restarted.wait(), 30)

    async def hangup(self) -> None:
        """Leave cleanly: wait (a little) for the host to flush the job and close."""
        if self._channel is None:
            return
        with contextlib.suppress(Exception):
            await self._channel.send({"type": "hangup"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 25)
        await self._channel.close()

    async def wait_closed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closed.is_set()

    async def drop(self) -> None:
        """The line drops: close the connection with no goodbye."""
        if self._channel is not None:
            await self._channel.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 5)


class _SdkStreamNoise(logging.Filter):
    """The rtc SDK logs every data stream nobody reads at INFO on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("ignoring byte stream", "ignoring text stream"))


class LiveKitTransport(CallerTransport):
    """A participant in a real LiveKit room (LIVEKIT_URL set), through the livekit rtc SDK.

    It publishes the caller's microphone as soon as it joins (again after every rejoin:
    a new Room has no tracks), plays nothing but keeps every frame of the agent's audio
    track, and follows the agent through its `lk.agent.state` participant attribute.

    - `drop()` is a network failure, not a hang-up: the SDK's `simulate_scenario`
      (a full reconnect: new peer connections, the same identity rejoining as a new
      participant). When the SDK recovers by itself, the scenario's `reconnect` step asks
      for no new token (`recovered_by_itself`), as a real client would not.
    - A scenario's `impairment:` (jitter, loss) is applied to the caller's frames before
      they are sent.
    - `hangup()` leaves cleanly (CLIENT_INITIATED).
    - `agent_restart()` crashes the agent's job process through the platform's control
      group (AGENT_FAULT_INJECTION; needs the platform's Redis, like `retry_tool` needs its
      database) and waits for the job LiveKit dispatches anew to join.
    """

    supports_agent_restart = True
    applies_impairment = True
    RESTART_WAIT_SECONDS = 90.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._room: Any = None
        self._source: Any = None
        self._track_sid = ""
        self._dropped = False
        self._rate = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._agents_seen: list[str] = []
        self._agent_identity = ""
        self._agent_joined = asyncio.Event()
        self._reconnected = asyncio.Event()
        logging.getLogger().addFilter(_SdkStreamNoise())

    @property
    def room(self) -> Any:
        return self._room

    @property
    def agent_identity(self) -> str:
        return self._agent_identity

    async def connect(self, url: str, token: str) -> None:
        from livekit import rtc

        self._dropped = False
        await self._forget_room()
        self.closed = asyncio.Event()
        self._set_speaking(False)
        room = rtc.Room()
        self._room = room
        room.on("track_subscribed", self._on_track)
        room.on("participant_connected", self._on_participant)
        room.on("participant_disconnected", self._on_participant_left)
        room.on("participant_attributes_changed", self._on_attributes)
        room.on("reconnecting", lambda: self.on_note("LiveKit: reconnecting"))
        room.on("reconnected", self._on_reconnected)
        room.on("disconnected", self._on_disconnected)
        try:
            await asyncio.wait_for(room.connect(url, token), CONNECT_TIMEOUT_SECONDS)
        except Exception as exc:
            raise TransportError(f"could not join the LiveKit room at {url}: {exc}") from exc
        for participant in room.remote_participants.values():
            self._on_participant(participant)
        await self._publish_microphone(22050)

    async def _forget_room(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._source = None
        self._rate = 0
        if self._room is not None:
            self._room.off("disconnected", self._on_disconnected)
            with contextlib.suppress(Exception):
                await self._room.disconnect()
            self._room = None

    async def _publish_microphone(self, sample_rate: int) -> None:
        from livekit import rtc

        if self._source is not None:
            with contextlib.suppress(Exception):
                await self._room.local_participant.unpublish_track(self._track_sid)
        self._rate = sample_rate
        self._source = rtc.AudioSource(sample_rate, 1)
        track = rtc.LocalAudioTrack.create_audio_track("caller-microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self._room.local_participant.publish_track(track, options)
        self._track_sid = publication.sid

    # -- room events ----------------------------------------------------------------------
    @staticmethod
    def _is_agent(participant: Any) -> bool:
        from livekit import rtc

        return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT or participant.identity.startswith(
            "agent-"
        )

    def _on_track(self, track: Any, publication: Any, participant: Any) -> None:
        from livekit import rtc

        if track.kind == rtc.TrackKind.KIND_AUDIO and self._is_agent(participant):
            self._tasks.append(asyncio.create_task(self._listen(track), name="caller-agent-audio"))

    def _on_participant(self, participant: Any) -> None:
        if not self._is_agent(participant):
            return
        identity = participant.identity
        if identity not in self._agents_seen:
            self._agents_seen.append(identity)
            if len(self._agents_seen) > 1:
                self.restarts += 1
                self.on_note(f"a new agent joined ({identity})")
        self._agent_identity = identity
        self._agent_joined.set()
        state = participant.attributes.get("lk.agent.state")
        if state is not None:
            self._set_speaking(state == "speaking")

    def _on_participant_left(self, participant: Any) -> None:
        if participant.identity == self._agent_identity:
            self.on_note(f"the agent left the room ({participant.identity})")
            self._agent_identity = ""
            self._agent_joined.clear()
            self._set_speaking(False)

    def _on_attributes(self, changed: dict[str, str], participant: Any) -> None:
        if not self._is_agent(participant):
            return
        if participant.identity != self._agent_identity:
            self._on_participant(participant)
        state = changed.get("lk.agent.state")
        if state is not None:
            self._set_speaking(state == "speaking")

    def _on_reconnected(self) -> None:
        self.on_note("LiveKit: reconnected")
        self._reconnected.set()

    def _on_disconnected(self, *args: Any) -> None:
        self._set_speaking(False)
        self.closed.set()
        self._changed.set()

    async def _listen(self, track: Any) -> None:
        from livekit import rtc

        async for event in rtc.AudioStream(track):
            frame = event.frame
            self.on_agent_audio(np.frombuffer(bytes(frame.data), dtype=np.int16), frame.sample_rate)

    # -- the caller's actions ---------------------------------------------------------------
    async def send_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        from livekit import rtc

        if self._room is None or not self._room.isconnected():
            raise TransportError("not in the LiveKit room")
        if self._source is None or self._rate != sample_rate:
            await self._publish_microphone(sample_rate)
        pcm = np.asarray(samples, dtype=np.int16).tobytes()
        if self.impairment is not None:
            # Jitter and loss before the network, with the same seeded model the local host
            # uses after it (worker/impairment.py); WebRTC's jitter buffer then does its part.
            pcm = await self.impairment.deliver(pcm, due=time.monotonic())
        await self._source.capture_frame(rtc.AudioFrame(pcm, sample_rate, 1, len(pcm) // 2))

    def recovered_by_itself(self) -> bool:
        return self._room is not None and self._room.isconnected() and self._dropped

    async def drop(self) -> None:
        """A network failure: the SDK tears down its connections and reconnects by itself."""
        from livekit import rtc

        if self._room is None or not self._room.isconnected():
            return
        self._reconnected.clear()
        self._dropped = True
        await self._room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reconnected.wait(), CONNECT_TIMEOUT_SECONDS)

    async def agent_restart(self) -> None:
        """Crash the agent's job process (fault injection) and wait for the new job."""
        from channels.layers import get_channel_layer

        from sessions_app.broadcast import agent_control_group

        if not self.session_id:
            raise TransportError("agent_restart needs the session id")
        before = self._agent_identity
        layer = get_channel_layer()
        if layer is None:
            raise TransportError("agent_restart needs the platform's channel layer (its Redis)")
        await layer.group_send(agent_control_group(self.session_id), {"type": "agent.crash"})
        deadline = time.monotonic() + self.RESTART_WAIT_SECONDS
        while time.monotonic() < deadline:
            if self._agent_identity and self._agent_identity != before:
                return
            await asyncio.sleep(0.2)
        raise TransportError(
            f"no new agent joined within {self.RESTART_WAIT_SECONDS:.0f} s of crashing {before or 'the agent'}"
            " (is AGENT_FAULT_INJECTION on for the worker?)"
        )

    async def hangup(self) -> None:
        await self._forget_room()
        self._set_speaking(False)
        self.closed.set()

    async def wait_closed(self, timeout: float) -> bool:
        """After POST /end the platform deletes the room, which disconnects us."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closed.is_set()
