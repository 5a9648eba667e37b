"""The short spoken apology played when every provider of a stage failed.

It must not depend on the stage that failed (the TTS may be the one that is down), so
the clip is audio rendered ahead of time: the WAV file named by `APOLOGY_AUDIO_PATH`
when set, else the offline TTS (Piper) renders `APOLOGY_TEXT` once per process
(`prerender()` at prewarm). If neither is available the apology is spoken by the
agent's own TTS chain, which is the best that is left.
"""

from __future__ import annotations

import logging
import threading
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from django.conf import settings
from livekit import rtc

logger = logging.getLogger(__name__)

DEFAULT_APOLOGY_TEXT = "Sorry, I'm having a technical problem. Could you say that again?"
FRAME_MS = 20

_lock = threading.Lock()
_clip: tuple[np.ndarray, int] | None = None
_clip_text = ""


def apology_text() -> str:
    return str(getattr(settings, "APOLOGY_TEXT", "") or DEFAULT_APOLOGY_TEXT)


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: the apology clip must be 16-bit PCM")
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if wav.getnchannels() > 1:
            data = data.reshape(-1, wav.getnchannels()).mean(axis=1).astype(np.int16)
    return data, rate


def prerender() -> tuple[np.ndarray, int] | None:
    """Load or render the clip once (blocking: call from prewarm or a thread)."""
    global _clip, _clip_text
    text = apology_text()
    with _lock:
        if _clip is not None and _clip_text == text:
            return _clip
        path = str(getattr(settings, "APOLOGY_AUDIO_PATH", "") or "")
        try:
            if path:
                _clip = _read_wav(path)
            else:
                # GPL-3.0 Piper stays an optional import, as in the offline TTS provider.
                from agents_app.runtime.providers import piper

                _clip = piper.synthesize(text)
            _clip_text = text
        except Exception:
            logger.warning("could not prepare the apology clip; the agent's TTS will speak it", exc_info=True)
            _clip = None
        return _clip


def clip() -> tuple[np.ndarray, int] | None:
    """The prepared clip, or None (never renders on the event loop)."""
    return _clip if _clip_text == apology_text() else None


async def clip_frames(samples: np.ndarray, sample_rate: int) -> AsyncIterator[rtc.AudioFrame]:
    step = sample_rate * FRAME_MS // 1000
    for start in range(0, len(samples), step):
        part = samples[start : start + step]
        yield rtc.AudioFrame(part.tobytes(), sample_rate, 1, len(part))


def play(session: Any) -> Any:
    """Speak the apology on `session` (an AgentSession); returns the SpeechHandle.

    Added to the chat context, so the model knows the caller was asked to repeat and the
    turn record shows what the caller heard.
    """
    prepared = clip()
    if prepared is None:
        return session.say(apology_text(), allow_interruptions=True)
    samples, rate = prepared
    return session.say(apology_text(), audio=clip_frames(samples, rate), allow_interruptions=True)
