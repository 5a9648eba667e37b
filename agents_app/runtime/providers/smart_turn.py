"""Semantic end of turn: Smart Turn v3.2 as a livekit-agents streaming turn detector.

Smart Turn (Pipecat's open audio end-of-turn model, BSD-2-Clause: a Whisper-tiny encoder
and a classifier, ~8.7 MB) hears the last 8 s of the caller's audio and gives the
probability that the caller has finished. livekit-agents asks a streaming turn detector
for a prediction once the VAD has heard 200 ms of silence (`AudioRecognition`, the
`_StreamingTurnDetector` protocol of voice/turn.py): below the agent's threshold it waits
`max_delay` for more speech instead of answering at once. So the VAD's silence can be
short and a caller pausing mid-sentence is not answered halfway.

The audio alone is not enough: a synthetic voice (Piper, the simulated callers) often
sounds finished at a comma, where Smart Turn then says "complete" (measured: 0.6-0.98 on
sentences cut at their comma pause). So the stream also reads the words: the agent's STT
node passes each final transcript in (`note_transcript`), a prediction waits for the
transcript of the speech it follows (up to TRANSCRIPT_WAIT seconds), and a turn whose
words end on a word that cannot end a sentence ("to", "the", "and", "my", "uh" …) counts
as unfinished whatever the audio says.

The model file and its numpy feature extractor ship inside the `pipecat-ai` wheel
(installed without its dependencies). Both are loaded by file path: importing the
`pipecat` package would replace `asyncio.wait_for` process-wide on Python < 3.12 (its
`__init__` does) and pull in loguru. Inference runs on one worker thread (onnxruntime
and numpy release the GIL), never on the agent's event loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
from livekit.agents.voice.turn import TurnDetectionEvent

logger = logging.getLogger(__name__)

MODEL_NAME = "smart-turn-v3.2"
SAMPLE_RATE = 16000
WINDOW_SECONDS = 8  # the model hears the last 8 s, zero-padded in front
_DATA = "pipecat/audio/turn/smart_turn"
_MODEL_FILE = f"{_DATA}/data/smart-turn-v3.2-cpu.onnx"
_FEATURES_FILE = f"{_DATA}/_whisper_features.py"
# How long a prediction waits for the transcript of the speech before it (the STT decodes
# after the VAD's end of speech, ~0.1-0.2 s here); past it, the audio decides alone.
TRANSCRIPT_WAIT = 0.6
# The probability of "finished" given to words that cannot end a sentence.
DANGLING_PROBABILITY = 0.05
# Words after which an English sentence is not over: articles, prepositions,
# conjunctions, possessives, auxiliaries, fillers.
DANGLING_WORDS = frozenset(
    """
    a an the to of for from with at in on into onto by about as than
    and or but so because if that which who whose when where while until unless
    my your his her our their its this these those
    is are was were am be been being have has had do does did will would can could
    shall should may might must
    i we you he she they it i'm we're you're
    um uh er erm like
    """.split()
)
_WORD = re.compile(r"[a-z']+")


def words_dangle(transcript: str) -> bool:
    """True when the caller's words so far stop where a sentence cannot end ("I want to
    move my appointment to", "my number is uh", "and …")."""
    text = transcript.strip().lower()
    if not text or text.endswith(("...", "…", "-", "—")):
        return bool(text)
    words = _WORD.findall(text)
    return bool(words) and words[-1] in DANGLING_WORDS


@dataclass(frozen=True)
class Eagerness:
    """An agent's turn eagerness: below `threshold` (probability that the caller has
    finished) the agent waits up to `max_delay` seconds after the speech for more."""

    threshold: float
    max_delay: float


# A caller resuming after a 0.7 s pause is heard ~0.8 s after the speech ended, so even
# `eager` waits longer than that for a caller the model thinks is mid-sentence.
EAGERNESS = {
    "eager": Eagerness(threshold=0.3, max_delay=1.0),
    "balanced": Eagerness(threshold=0.5, max_delay=1.5),
    "patient": Eagerness(threshold=0.7, max_delay=2.5),
}


def _packaged_file(relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution("pipecat-ai")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "Smart Turn needs the pipecat-ai wheel (requirements-model.txt, installed with --no-deps)"
        ) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise RuntimeError(f"pipecat-ai {dist.version} does not ship {relative}")
    return path


class SmartTurnModel:
    """The ONNX session and the feature extractor, loaded once per process."""

    _instance: SmartTurnModel | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import onnxruntime as ort

        spec = importlib.util.spec_from_file_location("_smart_turn_features", _packaged_file(_FEATURES_FILE))
        assert spec is not None and spec.loader is not None
        features = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(features)
        self._features: Callable[..., np.ndarray] = features.compute_whisper_log_mel_features
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(_packaged_file(_MODEL_FILE)), sess_options=options)
        # One thread: predictions of one process queue rather than compete for the cores
        # the STT and TTS need.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    @classmethod
    def get(cls) -> SmartTurnModel:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def probability(self, audio: np.ndarray) -> float:
        """P(the caller has finished) for 16 kHz mono float32 audio in [-1, 1]."""
        window = WINDOW_SECONDS * SAMPLE_RATE
        audio = audio[-window:]
        if len(audio) < window:
            audio = np.pad(audio, (window - len(audio), 0))
        features = self._features(audio.astype(np.float32), do_normalize=True)
        outputs = self._session.run(None, {"input_features": np.expand_dims(features, 0)})
        return float(np.asarray(outputs[0]).reshape(-1)[0])


def warm() -> None:
    """Load the model and run it once (blocking; for prewarm)."""
    SmartTurnModel.get().probability(np.zeros(SAMPLE_RATE, dtype=np.float32))


class SmartTurnDetector:
    """A `_StreamingTurnDetector` (livekit-agents voice/turn.py) backed by Smart Turn."""

    def __init__(self, *, eagerness: str = "balanced", prediction_timeout: float = 1.0) -> None:
        self._eagerness = EAGERNESS.get(eagerness, EAGERNESS["balanced"])
        self._prediction_timeout = prediction_timeout
        self.predictions: list[dict[str, Any]] = []  # the latest few, for tests and logs
        self._streams: list[SmartTurnStream] = []

    @property
    def model(self) -> str:
        return MODEL_NAME

    @property
    def provider(self) -> str:
        return "offline"

    @property
    def max_delay(self) -> float:
        return self._eagerness.max_delay

    @property
    def threshold(self) -> float:
        return self._eagerness.threshold

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SmartTurnStream:
        stream = SmartTurnStream(detector=self)
        self._streams = [s for s in self._streams if not s.closed] + [stream]
        return stream

    def note_transcript(self, text: str) -> None:
        """A final transcript of the caller (possibly empty), from the agent's STT node."""
        for stream in self._streams:
            if not stream.closed:
                stream.note_transcript(text)

    def _record(self, entry: dict[str, Any]) -> None:
        self.predictions.append(entry)
        del self.predictions[:-20]


class SmartTurnStream:
    """The caller's audio of the current turn (the last 8 s at 16 kHz) and its predictions."""

    def __init__(self, *, detector: SmartTurnDetector) -> None:
        self._detector = detector
        self._buffer = np.zeros(WINDOW_SECONDS * SAMPLE_RATE, dtype=np.int16)
        self._filled = 0  # valid samples at the end of the buffer
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._pending: asyncio.Future[TurnDetectionEvent] | None = None
        self._closed = False
        self._transcript = ""  # the caller's words of the current turn
        self._finals = 0  # final transcripts seen, to match one to a prediction
        self._transcript_seen: asyncio.Event | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def note_transcript(self, text: str) -> None:
        if text.strip():
            self._transcript = f"{self._transcript} {text.strip()}".strip()
        self._finals += 1
        if self._transcript_seen is not None:
            self._transcript_seen.set()

    # -- the _StreamingTurnDetectorStream protocol ----------------------------------
    @property
    def model(self) -> str:
        return MODEL_NAME

    @property
    def provider(self) -> str:
        return "offline"

    @property
    def is_fallback(self) -> bool:
        return False

    @property
    def prediction_timeout(self) -> float:
        return self._detector._prediction_timeout

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return self._detector.threshold

    async def backchannel_threshold(self, language: LanguageCode | None) -> float | None:
        return None  # the agent does not backchannel itself

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return True  # 23 languages; a wrong guess only costs the fixed delays

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        if self._closed:
            return
        samples = np.frombuffer(bytes(frame.data), dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler_rate != frame.sample_rate:
                self._resampler = rtc.AudioResampler(input_rate=frame.sample_rate, output_rate=SAMPLE_RATE)
                self._resampler_rate = frame.sample_rate
            mono = rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, len(samples))
            out = [np.frombuffer(bytes(f.data), dtype=np.int16) for f in self._resampler.push(mono)]
            samples = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
        self._append(samples)

    def _append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if n == 0:
            return
        size = len(self._buffer)
        if n >= size:
            self._buffer[:] = samples[-size:]
        else:
            self._buffer[:-n] = self._buffer[n:]
            self._buffer[-n:] = samples
        self._filled = min(size, self._filled + n)

    def predict(self) -> asyncio.Future[TurnDetectionEvent]:
        """The audio model on the turn's audio so far (on the model's thread), then, once the
        transcript of this speech is in (or TRANSCRIPT_WAIT passed), the words' veto."""
        self.cancel_inference()
        audio = self._buffer[len(self._buffer) - self._filled :].astype(np.float32) / 32768.0
        seen = self._transcript_seen = asyncio.Event()
        task = asyncio.ensure_future(self._predict(audio, finals_before=self._finals, seen=seen))
        self._pending = task
        return task

    async def _predict(self, audio: np.ndarray, *, finals_before: int, seen: asyncio.Event) -> TurnDetectionEvent:
        requested = time.time()
        loop = asyncio.get_running_loop()
        try:
            model = SmartTurnModel.get()
            audio_probability = await loop.run_in_executor(model.executor, model.probability, audio)
        except Exception:
            # The recogniser awaits this: an error must not stall the turn. "Finished" leaves
            # the fixed delays (VAD silence + min_delay) in charge.
            logger.warning("smart turn prediction failed; the turn ends on silence", exc_info=True)
            audio_probability = 1.0
        inferred = time.time()
        if self._finals == finals_before:
            try:
                await asyncio.wait_for(seen.wait(), timeout=max(0.0, TRANSCRIPT_WAIT - (inferred - requested)))
            except TimeoutError:
                pass
        dangling = self._finals > finals_before and words_dangle(self._transcript)
        probability = min(audio_probability, DANGLING_PROBABILITY) if dangling else audio_probability
        self._detector._record(
            {
                "audio": round(audio_probability, 3),
                "dangling": dangling,
                "probability": round(probability, 3),
                # From the request: the model's answer, then the transcript's (or the wait's end).
                "inference_ms": round((inferred - requested) * 1000, 1),
                "decided_ms": round((time.time() - requested) * 1000, 1),
            }
        )
        return TurnDetectionEvent(
            type="eot_prediction",
            end_of_turn_probability=probability,
            last_speaking_time=requested,
            detection_delay=time.time() - requested,
            inference_duration=inferred - requested,
        )

    def cancel_inference(self, *, timed_out: bool = False) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        self._pending = None

    def flush(self, reason: str | None = None) -> None:
        """A committed (or cleared) turn: the next prediction hears only the next turn."""
        self.cancel_inference()
        self._filled = 0
        self._buffer[:] = 0
        self._transcript = ""

    def end_input(self) -> None:
        self.cancel_inference()

    async def aclose(self) -> None:
        self._closed = True
        self.cancel_inference()
