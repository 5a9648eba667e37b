"""Moonshine speech-to-text (offline, open vocabulary): the tiny-en model, decoded on threads.

The offline STT by default (PocketSphinx stays selectable: agents_app/runtime/providers/
sphinx.py). `moonshine-voice` is pinned to 0.1.0, the last release that ships the tiny-en
weights inside its wheel (later ones download them at run time), and the model is always
the bundled `moonshine_voice.get_model_path("tiny-en")`: no download helper is ever called.

It is a non-streaming `stt.STT`; livekit-agents adds VAD segmentation (StreamAdapter), so
each call decodes one utterance. Transcripts keep Moonshine's case and punctuation.

Decoding never runs on the agent's event loop: it runs on a `ThreadPoolExecutor` of
`settings.STT_THREADS` threads. The library is a ctypes CDLL, so the GIL is released
while it decodes, and threads are enough (no process pool, no pickling, nothing to spawn).
Whether one native transcriber may decode on two threads at once is not documented, so
each decode takes a transcriber of its own from an idle queue (at most one per thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer

from agents_app.runtime.providers.pcm import SAMPLE_RATE, final_transcript, mono_16k

if TYPE_CHECKING:
    from moonshine_voice.transcriber import Transcriber

MODEL = "moonshine/tiny-en"
# No speaker labels and no copy of each line's audio: neither is used, and both cost time
# on the decoding thread (the audio copy is a Python list, built while holding the GIL).
OPTIONS = {"identify_speakers": "false", "return_audio_data": "false"}
# Moonshine answers "You" on exact digital silence (a few LSB of noise give nothing), so
# audio whose loudest sample stays below this (int16, about -54 dBFS) is not decoded.
SILENCE_PEAK = 64
_WORDY = re.compile(r"\w")

_LOCK = threading.Lock()
# Loading takes ~0.5 s: its own lock, so that the event loop asking for the pool never waits on it.
_LOAD_LOCK = threading.Lock()
_EXECUTOR: ThreadPoolExecutor | None = None
# Loaded transcribers not decoding right now. A decode takes one (or loads one), so there
# are never more than the executor's threads, and none is used by two threads at once.
_IDLE: queue.SimpleQueue[Transcriber] = queue.SimpleQueue()
_LOADED = 0


def threads() -> int:
    from django.conf import settings

    return getattr(settings, "STT_THREADS", 1) if settings.configured else 1


def _load() -> Transcriber:
    global _LOADED
    # One ONNX Runtime thread per decode. Left alone, each transcriber starts a pool of one
    # thread per core: on 2 cores a 3.2 s sentence then took ~250 ms but ~490 ms of CPU
    # (~300 ms for ~300 ms with one thread), the core the event loop, the VAD and Piper
    # need, and two decodes at once took ~550 ms each (~395 ms with one thread each).
    # STT_THREADS sets how many decode at once. moonshine-voice 0.1.0's native library
    # reads this variable when it opens a model; an operator's own value is kept.
    os.environ.setdefault("MOONSHINE_ORT_SINGLE_THREAD", "1")
    from moonshine_voice import ModelArch, get_model_path
    from moonshine_voice.transcriber import Transcriber

    with _LOAD_LOCK:
        transcriber = Transcriber(str(get_model_path("tiny-en")), model_arch=ModelArch.TINY, options=OPTIONS)
        _LOADED += 1
    return transcriber


def _transcribe(transcriber: Transcriber, samples: np.ndarray) -> Any:
    """`transcriber.transcribe_without_streaming(samples, 16000)`, without its audio copy.

    The public method builds its C array with `(c_float * n)(*audio)`, one Python float at
    a time while holding the GIL: ~5 ms per second of speech (15 ms for a 3 s sentence),
    a stall of the agent's event loop even though the decode itself runs on another thread.
    This passes the numpy buffer to the same C function and parses the result with the
    wrapper's own parser (moonshine_voice/transcriber.py of the pinned 0.1.0).
    """
    from moonshine_voice.errors import check_error
    from moonshine_voice.moonshine_api import TranscriptC

    audio = np.ascontiguousarray(samples, dtype=np.float32)
    out = ctypes.POINTER(TranscriptC)()
    error = transcriber._lib.moonshine_transcribe_without_streaming(
        transcriber._handle,
        audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        len(audio),
        SAMPLE_RATE,
        0,
        ctypes.byref(out),
    )
    check_error(error)
    return transcriber._parse_transcript(out)


def decode_samples(samples: np.ndarray) -> str:
    """Decode 16 kHz mono int16 samples (blocking: runs on the pool's threads, or in a check)."""
    if not len(samples) or int(np.abs(samples.astype(np.int32)).max()) < SILENCE_PEAK:
        return ""
    try:
        transcriber = _IDLE.get_nowait()
    except queue.Empty:
        transcriber = _load()
    try:
        transcript = _transcribe(transcriber, samples.astype(np.float32) / 32768.0)
    finally:
        _IDLE.put(transcriber)
    # Moonshine splits what it hears into lines at its own pauses: the utterance is all of them.
    # A line with no word at all ("?") is the model's, not the caller's.
    lines = [text for line in transcript.lines if _WORDY.search(text := (line.text or "").strip())]
    # Like Whisper, Moonshine writes "You" for a short lead-in of near-silence: a first line
    # that is only that, before the words, is not the caller's.
    if len(lines) > 1 and lines[0].strip(" .,!").lower() == "you":
        lines = lines[1:]
    return " ".join(lines)


def transcribe_frames(frames: list[rtc.AudioFrame]) -> str:
    """Resample and decode one utterance (blocking; the STT runs it on the pool)."""
    return decode_samples(mono_16k(frames))


# --- the agent process's pool ------------------------------------------------------
def pool() -> ThreadPoolExecutor:
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="moonshine-stt")
        return _EXECUTOR


def warm() -> None:
    """Load the model for every decoding thread (blocking, ~0.5 s each; call from prewarm)."""
    for _ in range(threads() - _LOADED):
        _IDLE.put(_load())


def shutdown_pool() -> None:
    """Stop the decoding threads (a LiveKit job process, at the end of its one job).

    livekit-agents waits for a job process's non-daemon threads before it exits; idle
    executor threads end at once, a decode in progress is let finish (a few hundred ms).
    The loaded models stay: the next decode starts a new pool without loading again.
    """
    global _EXECUTOR
    with _LOCK:
        executor, _EXECUTOR = _EXECUTOR, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


class MoonshineSTT(stt.STT):
    """Offline STT: Moonshine tiny-en (open vocabulary), decoded on a thread pool."""

    def __init__(self, *, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._language = language

    @property
    def model(self) -> str:
        return MODEL

    @property
    def provider(self) -> str:
        return "offline"

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frames = list(buffer) if isinstance(buffer, list) else [buffer]
        text = ""
        if frames:
            # Resampling runs on the pool too: nothing per utterance is done on the loop.
            text = await asyncio.get_running_loop().run_in_executor(pool(), transcribe_frames, frames)
        return final_transcript(text, self._language)
