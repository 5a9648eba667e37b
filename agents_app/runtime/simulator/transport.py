"""How a simulated caller reaches the agent: the local agent host (TCP), the same host
in-process, or a real LiveKit room (livekit rtc SDK: agents_app/runtime/simulator/livekit_transport.py).

Every transport tells the caller when the agent speaks and hands it the agent's audio as
played, so the caller can barge in at the right moment and record what it heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np

from agents_app.runtime.worker.local_server import AgentHost
from agents_app.runtime.worker.local_wire import AudioChunk, StreamChannel, memory_channel_pair

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
        self.impairment: Any = None  # agents_app.runtime.worker.impairment.Impairment, when applied here
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
