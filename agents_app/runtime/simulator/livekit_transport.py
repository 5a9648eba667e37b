"""The simulated caller in a real LiveKit room (LIVEKIT_URL set), through the livekit rtc SDK.

The transport of the local agent host (TCP or in-process) and what every transport
shares are in agents_app/runtime/simulator/transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from agents_app.runtime.simulator.transport import CONNECT_TIMEOUT_SECONDS, CallerTransport, TransportError


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

    def queued_seconds(self) -> float:
        """Audio captured but not yet sent (the rtc SDK's AudioSource paces it out)."""
        return self._source.queued_duration if self._source is not None else 0.0

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
        from sessions_app.live.messages import agent_crash

        if not self.session_id:
            raise TransportError("agent_restart needs the session id")
        before = self._agent_identity
        layer = get_channel_layer()
        if layer is None:
            raise TransportError("agent_restart needs the platform's channel layer (its Redis)")
        await layer.group_send(agent_control_group(self.session_id), agent_crash())
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
