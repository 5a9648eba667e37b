"""The local transport: one caller ↔ agent audio connection without a LiveKit room.

Used when `LIVEKIT_URL` is unset (demo, simulator, tests). The same `entrypoint` runs for
it as for a LiveKit job; only the audio I/O differs:

- input: whatever the caller pushes is queued and fed to the agent as paced 20 ms
  frames at 16 kHz on a real-time clock, with silence in between (a room delivers
  continuous audio too, and the VAD needs the silence to see the end of speech). A
  caller may push a whole utterance at once; it is still heard in real time.
- output: a real-time playout clock. `agent_frames()` yields each agent frame when it
  is "played"; `clear_buffer()` (barge-in) drops what has not been played yet and
  reports how much was played, which is what the transcript synchronizer needs to work
  out the heard text.

API (stable, see docs/CONTRACTS.md "Agent job"):
    call = LocalCall()
    task = asyncio.create_task(run_local_job(session_id=..., call=call, entrypoint=entrypoint))
    call.push_caller_frame(frame)            # any rate/size; thread-safe
    async for frame in call.agent_frames():  # as played, real-time paced
    call.agent_speaking / await call.wait_agent_speaking(True|False)
    call.hangup()                            # ends the job cleanly
    call.kill()                              # simulates an agent crash (no cleanup)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from livekit import rtc

from agents_app.runtime.worker.local_audio import (
    _SAMPLES_PER_FRAME,
    INPUT_SAMPLE_RATE,
    LocalAudioInput,
    LocalAudioOutput,
    running_loop,
)

logger = logging.getLogger(__name__)

_CLOSED = object()

_CURRENT_CALL: contextvars.ContextVar[LocalCall | None] = contextvars.ContextVar("local_call", default=None)


def current_call() -> LocalCall | None:
    """The LocalCall of the job running in this task (None under a LiveKit worker)."""
    return _CURRENT_CALL.get()


class JobKilled(Exception):
    """Raised inside a local job that `LocalCall.kill()` stopped (a simulated crash)."""


class LocalCall:
    """One caller's audio connection to an in-process agent job."""

    def __init__(self, *, input_noise_lsb: int = 0, impairment: Any = None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending = bytearray()  # caller PCM at 16 kHz, not yet fed to the agent
        self._resamplers: dict[int, rtc.AudioResampler] = {}
        self._listeners: list[asyncio.Queue[Any]] = []
        self._closed = asyncio.Event()
        self._killed = False
        self._speaking = False
        self._speaking_changed = asyncio.Event()
        self._noise = input_noise_lsb
        # Optional network impairment of the caller's frames (worker/impairment.py).
        self.impairment = impairment
        self.hangup_reason = ""
        self.audio_input = LocalAudioInput(self)
        self.audio_output = LocalAudioOutput(self)
        self._job_task: asyncio.Task[Any] | None = None
        self._on_speaking: list[Callable[[bool], None]] = []
        self.job: Any = None  # the JobRuntime serving this call, once it started

    # -- caller side ------------------------------------------------------------------
    def push_caller_frame(self, frame: rtc.AudioFrame) -> None:
        """Queue caller audio (any sample rate, mono or interleaved). Never blocks."""
        data = np.frombuffer(bytes(frame.data), dtype=np.int16)
        if frame.num_channels > 1:
            data = data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate != INPUT_SAMPLE_RATE:
            with self._lock:
                resampler = self._resamplers.get(frame.sample_rate)
                if resampler is None:
                    resampler = self._resamplers[frame.sample_rate] = rtc.AudioResampler(
                        input_rate=frame.sample_rate, output_rate=INPUT_SAMPLE_RATE, num_channels=1
                    )
                mono = rtc.AudioFrame(data.tobytes(), frame.sample_rate, 1, len(data))
                out = b"".join(bytes(f.data) for f in resampler.push(mono))
        else:
            out = data.tobytes()
        with self._lock:
            self._pending.extend(out)

    def push_caller_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Convenience: queue a whole int16 mono utterance."""
        samples = np.asarray(samples, dtype=np.int16)
        self.push_caller_frame(rtc.AudioFrame(samples.tobytes(), sample_rate, 1, len(samples)))

    @property
    def caller_audio_pending_seconds(self) -> float:
        """Caller audio queued but not yet heard by the agent."""
        with self._lock:
            return len(self._pending) / 2 / INPUT_SAMPLE_RATE

    async def agent_frames(self) -> AsyncIterator[rtc.AudioFrame]:
        """Agent audio as it is played (real-time paced). Ends when the call closes."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while True:
                if self._closed.is_set() and queue.empty():
                    return
                getter = asyncio.ensure_future(queue.get())
                closer = asyncio.ensure_future(self._closed.wait())
                try:
                    await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closer.cancel()
                if not getter.done():
                    getter.cancel()
                    continue
                item = getter.result()
                if item is _CLOSED:
                    return
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._listeners.remove(queue)

    @property
    def agent_speaking(self) -> bool:
        """True while agent audio is being played out."""
        return self._speaking

    async def wait_agent_speaking(self, speaking: bool = True, timeout: float | None = None) -> None:
        async def _wait() -> None:
            while self._speaking != speaking:
                self._speaking_changed.clear()
                await self._speaking_changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    def on_agent_speaking(self, callback: Callable[[bool], None]) -> None:
        """Register `callback(speaking)`, called on the job's loop at each change."""
        self._on_speaking.append(callback)

    def hangup(self, reason: str = "caller hung up") -> None:
        """End the call; the job closes its AgentSession and flushes its records."""
        self.hangup_reason = reason
        self._close()

    def kill(self) -> None:
        """Simulate an agent crash: the job task is cancelled with no graceful shutdown."""
        self._killed = True
        if self._job_task is not None and not self._job_task.done():
            self._job_task.cancel()
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def killed(self) -> bool:
        return self._killed

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- agent side -------------------------------------------------------------------
    def _close(self) -> None:
        def _do() -> None:
            if self._closed.is_set():
                return
            self._closed.set()
            for queue in list(self._listeners):
                queue.put_nowait(_CLOSED)
            self.audio_input._wake()

        if self._loop is not None and running_loop() is not self._loop:
            self._loop.call_soon_threadsafe(_do)
        else:
            _do()

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _take_input(self) -> bytes:
        need = _SAMPLES_PER_FRAME * 2
        with self._lock:
            chunk = bytes(self._pending[:need])
            del self._pending[:need]
        if len(chunk) < need:
            chunk += b"\x00" * (need - len(chunk))
        return chunk

    def _emit_played(self, frame: rtc.AudioFrame) -> None:
        for queue in self._listeners:
            queue.put_nowait(frame)

    def _set_speaking(self, speaking: bool) -> None:
        if speaking == self._speaking:
            return
        self._speaking = speaking
        self._speaking_changed.set()
        for callback in list(self._on_speaking):
            try:
                callback(speaking)
            except Exception:
                logger.exception("agent speaking callback failed")


async def run_local_job(*, session_id: str, call: LocalCall, entrypoint: Callable[[Any], Awaitable[None]]) -> None:
    """Run a job `entrypoint` (the platform's: agents_app.runtime.worker.entrypoint.entrypoint) for
    one session over `call`, in this event loop. The caller passes it in, so this module
    never imports the entrypoint (which imports this module).

    Returns when the call is hung up (or killed). `call.kill()` cancels the job the way
    a crashed process would stop: no goodbye, no final flush beyond what was written.
    """
    from livekit.agents.testing import fake_job_context

    call._bind(asyncio.get_running_loop())
    token = _CURRENT_CALL.set(call)
    try:
        with fake_job_context(
            job_id=f"local-{session_id}", job_metadata=json.dumps({"session_id": str(session_id)})
        ) as ctx:
            call._job_task = asyncio.current_task()
            try:
                await entrypoint(ctx)
            except asyncio.CancelledError:
                if not call.killed:
                    raise
                logger.info("local job for %s killed (simulated crash)", session_id)
    finally:
        _CURRENT_CALL.reset(token)
        call._close()


def prewarm(setup: Callable[[Any], None]) -> None:
    """Run a worker's prewarm `setup` (agents_app.runtime.worker.entrypoint.prewarm: the VAD and
    the offline models) now, blocking, on a thread-mode JobProcess.

    Call it once per process before the first local job (e.g. from a thread at server
    start), or the first turn pays for loading Moonshine and Piper.
    """
    from livekit.agents import JobExecutorType, JobProcess

    setup(JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None))
