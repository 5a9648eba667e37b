"""What the offline recognisers share: one mono 16 kHz int16 array from livekit frames,
and the final transcript event they answer with."""

from __future__ import annotations

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode

SAMPLE_RATE = 16000


def mono_16k(frames: list[rtc.AudioFrame]) -> np.ndarray:
    """Join the frames, mix to mono and resample to 16 kHz (a telephone leg arrives at 8 kHz,
    a LiveKit room at 24 or 48 kHz). Empty input gives an empty array."""
    merged = rtc.combine_audio_frames(frames) if frames else None
    if merged is None or merged.samples_per_channel == 0:
        return np.zeros(0, dtype=np.int16)
    data = np.frombuffer(bytes(merged.data), dtype=np.int16)
    if merged.num_channels > 1:
        data = data.reshape(-1, merged.num_channels).mean(axis=1).astype(np.int16)
    if merged.sample_rate != SAMPLE_RATE:
        resampler = rtc.AudioResampler(input_rate=merged.sample_rate, output_rate=SAMPLE_RATE, num_channels=1)
        frame = rtc.AudioFrame(data.tobytes(), merged.sample_rate, 1, len(data))
        parts = [bytes(f.data) for f in resampler.push(frame)] + [bytes(f.data) for f in resampler.flush()]
        data = np.frombuffer(b"".join(parts), dtype=np.int16)
    return data


def final_transcript(text: str, language: str) -> stt.SpeechEvent:
    """The one event a non-streaming offline STT returns for an utterance."""
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        request_id=utils.shortuuid(),
        alternatives=[stt.SpeechData(language=LanguageCode(language), text=text, confidence=1.0 if text else 0.0)],
    )
