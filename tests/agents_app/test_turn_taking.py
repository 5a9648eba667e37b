"""Turn-taking settings, backchannels, and the Smart Turn detector (issue 28)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc

from agents_app.runtime.providers import smart_turn
from agents_app.runtime.worker import turn_taking


@pytest.mark.parametrize(
    "text",
    [
        "Mm-hmm.",
        "Mhm",
        "Yeah.",
        "Okay.",
        "Right.",
        "Uh-huh.",
        "Yeah, okay.",
        "I see.",
        "Got it",
        "Ok,",
        "M. M. M.",
        "? Yeah.",
    ],
)
def test_acknowledgements_are_backchannels(text):
    assert turn_taking.is_backchannel(text)


@pytest.mark.parametrize(
    "text",
    ["Stop.", "Wait, no.", "No.", "Okay, stop.", "Yes, but", "Right?", "Hold on.", "", "Yeah yeah yeah yeah okay"],
)
def test_anything_else_is_not_a_backchannel(text):
    assert not turn_taking.is_backchannel(text)


@pytest.mark.parametrize(
    ("transcript", "dangles"),
    [
        ("I want to move my appointment to", True),
        ("My number is, uh", True),
        ("I would like the", True),
        ("so my card is four five...", True),
        ("I want to move my appointment to Thursday.", False),
        ("What time do you open?", False),
        ("Twelve Baker Street", False),
        ("", False),
    ],
)
def test_words_that_cannot_end_a_sentence_dangle(transcript, dangles):
    assert smart_turn.words_dangle(transcript) is dangles


def test_an_agent_with_semantic_turns_gets_smart_turn_and_a_short_vad_silence(settings, db):
    from agents_app.models import Agent

    settings.SMART_TURN_VAD_SILENCE_SECONDS = 0.25
    settings.VAD_MIN_SILENCE_SECONDS = 0.35
    agent = Agent(slug="a", name="A", turn_eagerness="patient", barge_in_min_speech_ms=700)
    options = turn_taking.turn_handling(agent)
    detector = options["turn_detection"]
    assert isinstance(detector, smart_turn.SmartTurnDetector)
    assert options["endpointing"]["max_delay"] == smart_turn.EAGERNESS["patient"].max_delay
    assert options["interruption"]["min_duration"] == 0.7
    assert turn_taking.vad_silence(agent) == 0.25

    agent.turn_detection = "vad"
    options = turn_taking.turn_handling(agent)
    assert options["turn_detection"] == "vad" and "max_delay" not in options["endpointing"]
    assert turn_taking.vad_silence(agent) == 0.35


async def test_livekit_takes_the_detector_as_a_streaming_turn_detector(db):
    from livekit.agents import AgentSession
    from livekit.agents.voice.turn import _StreamingTurnDetector, _StreamingTurnDetectorStream

    from agents_app.models import Agent
    from agents_app.runtime.worker.platform_agent import session_options

    options = session_options(agent=Agent(slug="a", name="A"))
    detector = options["turn_handling"]["turn_detection"]
    assert isinstance(detector, _StreamingTurnDetector)
    assert isinstance(detector.stream(), _StreamingTurnDetectorStream)
    session = AgentSession(**options)
    assert session.options.turn_handling["turn_detection"] is detector


def _frames(samples: np.ndarray, rate: int, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    step = rate * frame_ms // 1000
    return [
        rtc.AudioFrame(samples[i : i + step].tobytes(), rate, 1, len(samples[i : i + step]))
        for i in range(0, len(samples) - step + 1, step)
    ]


def _speech(text: str) -> tuple[np.ndarray, int]:
    from agents_app.runtime.providers import piper

    audio, rate = piper.synthesize(text)
    return np.concatenate([audio, np.zeros(rate // 5, dtype=np.int16)]), rate


async def test_the_stream_keeps_the_last_eight_seconds_at_16_khz_from_any_rate():
    stream = smart_turn.SmartTurnDetector().stream()
    tone = (np.sin(np.arange(8000 * 10) / 8000 * 2 * np.pi * 440) * 8000).astype(np.int16)
    for frame in _frames(tone, 8000):
        stream.push_audio(frame)
    assert stream._filled == smart_turn.WINDOW_SECONDS * smart_turn.SAMPLE_RATE
    assert np.abs(stream._buffer[-16000:]).max() > 4000  # the tone, resampled, not silence
    stream.flush("turn committed")
    assert stream._filled == 0 and stream._transcript == ""
    await stream.aclose()


async def test_a_finished_question_is_finished_and_dangling_words_are_not(prewarmed_smart_turn):
    detector = smart_turn.SmartTurnDetector()
    stream = detector.stream()
    audio, rate = _speech("What time do you open tomorrow?")
    for frame in _frames(audio, rate):
        stream.push_audio(frame)
    prediction = stream.predict()
    stream.note_transcript("What time do you open tomorrow?")
    finished = (await asyncio.wait_for(prediction, 10)).end_of_turn_probability
    assert finished > detector.threshold, detector.predictions

    prediction = stream.predict()  # the same audio, but the words stop on "to"
    stream.note_transcript("and I want to move it to")
    unfinished = (await asyncio.wait_for(prediction, 10)).end_of_turn_probability
    assert unfinished <= smart_turn.DANGLING_PROBABILITY < detector.threshold
    assert detector.predictions[-1]["dangling"] is True
    await stream.aclose()


async def test_a_prediction_without_a_transcript_is_the_audio_alone(prewarmed_smart_turn, monkeypatch):
    monkeypatch.setattr(smart_turn, "TRANSCRIPT_WAIT", 0.05)
    detector = smart_turn.SmartTurnDetector()
    stream = detector.stream()
    stream.note_transcript("and then to")  # before the prediction: not its transcript
    audio, rate = _speech("Thank you very much.")
    for frame in _frames(audio, rate):
        stream.push_audio(frame)
    event = await asyncio.wait_for(stream.predict(), 10)
    assert detector.predictions[-1]["dangling"] is False
    assert event.end_of_turn_probability == pytest.approx(detector.predictions[-1]["audio"], abs=1e-3)


async def test_a_cancelled_prediction_is_cancelled(prewarmed_smart_turn):
    stream = smart_turn.SmartTurnDetector().stream()
    prediction = stream.predict()
    stream.cancel_inference()
    await asyncio.sleep(0)
    assert prediction.cancelled()


@pytest.fixture(scope="module")
def prewarmed_smart_turn() -> None:
    smart_turn.warm()
