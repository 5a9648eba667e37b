"""The local agent host's wire protocol: its messages, their framing, and the two kinds of
connection that carry them (TCP, and an in-process pair for `--local-agent inprocess`).

A message is a JSON object with a string `type`, or an `AudioChunk` (mono int16 PCM).
On TCP each is framed as [kind:u8][length:u32 big-endian][payload]; an audio payload is
a 4-byte sample rate and the samples. Both the host (agents_app/runtime/worker/local_server.py)
and the simulated caller (agents_app/runtime/simulator/transport.py) speak it. docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from livekit import rtc

PROTOCOL_VERSION = 1
KIND_JSON = 1
KIND_AUDIO = 2
_HEADER = struct.Struct(">BI")  # kind, payload length
_RATE = struct.Struct(">I")
MAX_PAYLOAD = 1 << 20


class ProtocolError(Exception):
    pass


@dataclass
class AudioChunk:
    """Mono int16 little-endian PCM at `sample_rate`."""

    pcm: bytes
    sample_rate: int

    @classmethod
    def from_frame(cls, frame: rtc.AudioFrame) -> AudioChunk:
        data = bytes(frame.data)
        if frame.num_channels > 1:
            mono = np.frombuffer(data, dtype=np.int16).reshape(-1, frame.num_channels).mean(axis=1)
            data = mono.astype(np.int16).tobytes()
        return cls(pcm=data, sample_rate=frame.sample_rate)

    def to_frame(self) -> rtc.AudioFrame:
        return rtc.AudioFrame(self.pcm, self.sample_rate, 1, len(self.pcm) // 2)

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype=np.int16)


Message = dict[str, Any] | AudioChunk


class Channel(Protocol):
    """One duplex message connection between a caller and the host."""

    async def send(self, message: Message) -> None: ...

    async def recv(self) -> Message | None:  # None: the other side is gone
        ...

    async def close(self) -> None: ...


def encode(message: Message) -> bytes:
    if isinstance(message, AudioChunk):
        payload = _RATE.pack(message.sample_rate) + message.pcm
        return _HEADER.pack(KIND_AUDIO, len(payload)) + payload
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(KIND_JSON, len(payload)) + payload


def decode(kind: int, payload: bytes) -> Message:
    if kind == KIND_JSON:
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"invalid JSON message: {exc}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError("a JSON message must be an object with a string 'type'")
        return message
    if kind == KIND_AUDIO:
        if len(payload) < _RATE.size or (len(payload) - _RATE.size) % 2:
            raise ProtocolError("an audio message is a 4-byte sample rate and int16 samples")
        (rate,) = _RATE.unpack_from(payload)
        if not 8000 <= rate <= 48000:
            raise ProtocolError(f"unsupported sample rate {rate}")
        return AudioChunk(pcm=payload[_RATE.size :], sample_rate=rate)
    raise ProtocolError(f"unknown message kind {kind}")


class StreamChannel:
    """The TCP framing: [kind:u8][length:u32 big-endian][payload]."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    async def send(self, message: Message) -> None:
        async with self._lock:
            if self._writer.is_closing():
                return
            self._writer.write(encode(message))
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def recv(self) -> Message | None:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            kind, length = _HEADER.unpack(header)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"message of {length} bytes is over the {MAX_PAYLOAD} byte limit")
            payload = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return decode(kind, payload)

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class MemoryChannel:
    """An in-process channel end (the `inprocess` simulator transport)."""

    def __init__(self, inbox: asyncio.Queue[Message | None], peer_inbox: asyncio.Queue[Message | None]) -> None:
        self._inbox = inbox
        self._peer = peer_inbox
        self._closed = False

    async def send(self, message: Message) -> None:
        if not self._closed:
            self._peer.put_nowait(message)

    async def recv(self) -> Message | None:
        if self._closed:
            return None
        message = await self._inbox.get()
        if message is None:
            self._closed = True
        return message

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peer.put_nowait(None)
            self._inbox.put_nowait(None)


def memory_channel_pair() -> tuple[MemoryChannel, MemoryChannel]:
    """(caller end, host end) of an in-process connection."""
    a: asyncio.Queue[Message | None] = asyncio.Queue()
    b: asyncio.Queue[Message | None] = asyncio.Queue()
    return MemoryChannel(a, b), MemoryChannel(b, a)
