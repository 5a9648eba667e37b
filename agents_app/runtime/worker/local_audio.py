"""The local transport's audio I/O for livekit-agents (agents_app/runtime/worker/local.py):
the caller's audio in as paced 20 ms frames on a real-time clock, the agent's audio out
through a real-time playout clock whose `clear_buffer` reports what was played (heard)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

if TYPE_CHECKING:
    from agents_app.runtime.worker.local import LocalCall

logger = logging.getLogger(__name__)

INPUT_SAMPLE_RATE = 16000
FRAME_MS = 20
_SAMPLES_PER_FRAME = INPUT_SAMPLE_RATE * FRAME_MS // 1000


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LocalAudioInput(io.AudioInput):
    """Paced 20 ms frames of caller audio (silence when the caller pushes nothing)."""

    def __init__(self, call: LocalCall) -> None:
        super().__init__(label="LocalCall")
        self._call = call
        self._next_at: float | None = None
        self._wakeup = asyncio.Event()
        rng = np.random.default_rng(7)
        self._noise = (
            rng.integers(-call._noise, call._noise + 1, _SAMPLES_PER_FRAME).astype(np.int16) if call._noise else None
        )

    def _wake(self) -> None:
        self._wakeup.set()

    async def __anext__(self) -> rtc.AudioFrame:
        if self._call.closed:
            raise StopAsyncIteration
        now = time.monotonic()
        if self._next_at is None or now - self._next_at > 0.2:
            # first frame, or the loop stalled: restart the clock instead of bursting
            self._next_at = now
        delay = self._next_at - now
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
            if self._call.closed:
                raise StopAsyncIteration
        self._next_at += FRAME_MS / 1000
        data = self._call._take_input()
        if self._noise is not None:
            pcm = np.frombuffer(data, dtype=np.int16).astype(np.int32) + self._noise
            data = np.clip(pcm, -32768, 32767).astype(np.int16).tobytes()
        if self._call.impairment is not None:
            data = await self._call.impairment.deliver(data, due=self._next_at - FRAME_MS / 1000)
        return rtc.AudioFrame(data, INPUT_SAMPLE_RATE, 1, _SAMPLES_PER_FRAME)


class LocalAudioOutput(io.AudioOutput):
    """Real-time playout clock. Reports playback start/finish like RoomIO's output."""

    def __init__(self, call: LocalCall) -> None:
        super().__init__(
            label="LocalCall",
            next_in_chain=None,
            sample_rate=None,
            capabilities=io.AudioOutputCapabilities(pause=True),
        )
        self._call = call
        self._queue: deque[rtc.AudioFrame] = deque()
        self._segment_open = False  # frames captured for a segment not yet reported finished
        self._discarding = False  # the segment was cleared before its flush: drop its tail
        self._flushed = False
        self._started = False
        self._played = 0.0
        self._paused = asyncio.Event()
        self._paused.set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.first_frame_at: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._playout(), name="LocalAudioOutput.playout")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._discarding:
            return
        await super().capture_frame(frame)
        if not self._segment_open:
            self._segment_open, self._flushed, self._started, self._played = True, False, False, 0.0
        self._queue.append(frame)
        self._wakeup.set()

    def flush(self) -> None:
        super().flush()
        if self._discarding:
            self._discarding = False
            return
        if self._segment_open:
            self._flushed = True
            self._wakeup.set()

    def clear_buffer(self) -> None:
        self._queue.clear()
        if self._segment_open:
            if not self._flushed:
                self._discarding = True
            self._finish(interrupted=True)

    def pause(self) -> None:
        super().pause()
        self._paused.clear()

    def resume(self) -> None:
        super().resume()
        self._paused.set()

    def _finish(self, *, interrupted: bool) -> None:
        self._segment_open = False
        self._call._set_speaking(False)
        self.on_playback_finished(playback_position=self._played, interrupted=interrupted)

    async def _playout(self) -> None:
        clock: float | None = None
        while True:
            if not self._queue:
                if self._segment_open and self._flushed:
                    self._finish(interrupted=False)
                clock = None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._paused.wait()
            if not self._queue:
                continue
            frame = self._queue.popleft()
            now = time.monotonic()
            if clock is None or clock < now - 0.1:
                clock = now
            if not self._started:
                self._started = True
                self._call._set_speaking(True)
                self.on_playback_started(created_at=time.time())
            self._call._emit_played(frame)
            self._played += frame.duration
            clock += frame.duration
            delay = clock - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
