"""PocketSphinx speech-to-text (offline, ships its en-us model), decoded in a process pool.

Not the offline default (that is Moonshine, agents_app/runtime/providers/moonshine.py): an
offline agent whose STT model is "pocketsphinx" uses it, with its phrase list below.

PocketSphinx holds the GIL while it decodes (~0.5 s a sentence with the general language
model), which would stall the agent's event loop and its audio pacing, so decoding runs
in a `ProcessPoolExecutor` of `settings.STT_PROCESS_POOL_SIZE` processes. It is a
non-streaming `stt.STT`; livekit-agents adds VAD segmentation (StreamAdapter).

Phrase list: like the keyword hints of hosted STTs, `Agent.stt_phrases` narrows the
recogniser. PocketSphinx cannot boost words, so a phrase list switches it to a JSGF grammar
("any sequence of these phrases"), which is also ~15x faster. Only use it when callers
are expected to say those phrases; words missing from the dictionary are left out.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer

from agents_app.runtime.providers.pcm import SAMPLE_RATE, final_transcript, mono_16k

logger = logging.getLogger(__name__)

# PocketSphinx wants silence around speech, and exact-zero samples can make it return
# nothing: pad with a little silence and add a few LSB of noise.
PAD_SECONDS = 0.25
NOISE_LSB = 3

_POOL_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None

# --- worker process side -----------------------------------------------------------
_DECODERS: dict[tuple[str, ...], Any] = {}


def _decoder_for(phrases: tuple[str, ...]) -> Any:
    decoder = _DECODERS.get(phrases)
    if decoder is not None:
        return decoder
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=SAMPLE_RATE, logfn="/dev/null")
    grammar = _jsgf(decoder, phrases) if phrases else None
    if grammar:
        decoder.add_jsgf_string("phrases", grammar)
        decoder.activate_search("phrases")
    _DECODERS[phrases] = decoder
    return decoder


def _jsgf(decoder: Any, phrases: tuple[str, ...]) -> str | None:
    alternatives = []
    for phrase in phrases:
        words = re.findall(r"[a-z']+", phrase.lower())
        if words and all(decoder.lookup_word(w) for w in words):
            alternatives.append(" ".join(words))
        else:
            logger.warning("stt phrase %r has words outside the dictionary; ignored", phrase)
    if not alternatives:
        return None
    body = " | ".join(f"( {a} )" for a in dict.fromkeys(alternatives))
    return f"#JSGF V1.0;\ngrammar phrases;\npublic <utterance> = ( {body} )+;\n"


def decode_pcm(pcm: bytes, phrases: tuple[str, ...] = ()) -> str:
    """Decode 16 kHz mono int16 PCM. Runs inside a pool process."""
    decoder = _decoder_for(phrases)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    text = hyp.hypstr.strip() if hyp is not None else ""
    return without_stray_word(text, phrases) if phrases else text


def without_stray_word(text: str, phrases: tuple[str, ...]) -> str:
    """The grammar's hypothesis without a lone word after its last complete phrase.

    The grammar allows only whole phrases, but the decoder returns its best path even when
    the audio ends inside one: on narrowband (telephone) audio the noise after the speech
    often becomes the first word of another phrase ("… two pizzas i"), which the stored
    words and the end-of-turn's word check (a sentence cannot end on "i") then get wrong.
    A longer unfinished phrase is kept: the caller may really have stopped inside it.
    """
    words = text.split()
    known = {tuple(re.findall(r"[a-z']+", phrase.lower())) for phrase in phrases}
    known.discard(())
    # complete[i]: the first i words are a sequence of whole phrases.
    complete = [True] + [False] * len(words)
    for end in range(1, len(words) + 1):
        complete[end] = any(
            complete[end - len(phrase)] and tuple(words[end - len(phrase) : end]) == phrase
            for phrase in known
            if len(phrase) <= end
        )
    if len(words) >= 2 and not complete[-1] and complete[-2]:
        return " ".join(words[:-1])
    return text


def _warm(phrases: tuple[str, ...]) -> bool:
    _decoder_for(phrases)
    return True


# --- agent process side ------------------------------------------------------------
def pool() -> ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from django.conf import settings

            size = getattr(settings, "STT_PROCESS_POOL_SIZE", 1) if settings.configured else 1
            # spawn, not fork: the agent process has threads (Django, asyncio, ONNX).
            _POOL = ProcessPoolExecutor(max_workers=size, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_POOL.shutdown, wait=False, cancel_futures=True)
        return _POOL


def shutdown_pool() -> None:
    """Stop the decoder processes (a LiveKit job process, at the end of its one job).

    livekit-agents waits for a job process's non-daemon threads before it exits, and the
    pool's manager thread is one: without this, every job process was killed after its
    10 s shutdown timeout instead of exiting.
    """
    global _POOL
    with _POOL_LOCK:
        executor, _POOL = _POOL, None
    if executor is None:
        return
    processes = list((executor._processes or {}).values())
    for process in processes:
        process.terminate()
    # The decoders are gone, so this returns at once; it joins the manager thread.
    executor.shutdown(wait=True, cancel_futures=True)


def warm_pool(phrases: list[str] | tuple[str, ...] = ()) -> None:
    """Start the pool's processes and load the model (blocking; call from prewarm)."""
    executor = pool()
    size = executor._max_workers
    for future in [executor.submit(_warm, tuple(phrases)) for _ in range(size)]:
        future.result()


def warm_in_background(phrases: list[str] | tuple[str, ...] = ()) -> None:
    """Start the pool's processes and load the decoder without waiting for them (an agent
    that picks PocketSphinx, at the start of its job: ready by the caller's first words)."""
    executor = pool()
    for _ in range(executor._max_workers):
        executor.submit(_warm, tuple(phrases))


def prepare_pcm(frames: list[rtc.AudioFrame], *, seed: int = 0) -> bytes:
    """Mix to 16 kHz mono int16, pad with silence and add a few LSB of noise."""
    data = mono_16k(frames)
    if not len(data):
        return b""
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.int16)
    padded = np.concatenate([pad, data, pad]).astype(np.int32)
    noise = np.random.default_rng(seed).integers(-NOISE_LSB, NOISE_LSB + 1, len(padded))
    return np.clip(padded + noise, -32768, 32767).astype(np.int16).tobytes()


class PocketSphinxSTT(stt.STT):
    """Offline STT: PocketSphinx en-us, decoded in a process pool."""

    def __init__(self, *, phrases: list[str] | None = None, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._phrases = tuple(p for p in (phrases or []) if isinstance(p, str) and p.strip())
        self._language = language

    @property
    def phrases(self) -> tuple[str, ...]:
        """The phrase list as the decoders are keyed on it (blank entries dropped)."""
        return self._phrases

    @property
    def model(self) -> str:
        return "pocketsphinx/en-us" + ("+phrases" if self._phrases else "")

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
        frames = buffer if isinstance(buffer, list) else [buffer]
        pcm = prepare_pcm(list(frames))
        text = ""
        if pcm:
            loop = asyncio.get_running_loop()
            text = await loop.run_in_executor(pool(), decode_pcm, pcm, self._phrases)
        return final_transcript(text, self._language)
