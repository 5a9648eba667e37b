"""The caller's heard-gap meter (agents_app/runtime/simulator/heard.py) on a fake clock,
its matching to stored turns, and a whole simulated call reporting through the API."""

from __future__ import annotations

import numpy as np
import pytest

from agents_app.runtime.simulator.heard import ENERGY_THRESHOLD, HeardMeter, loud_span, match_turns

RATE = 16000
FRAME = 320  # 20 ms


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _frame(loud: bool, *, samples: int = FRAME) -> np.ndarray:
    return np.full(samples, 8000 if loud else 0, dtype=np.int16)


def _speak(meter: HeardMeter, clock: Clock, text: str, *, frames: int, barge_in: bool = False) -> None:
    """`frames` loud 20 ms frames then 10 silent ones, sent in real time."""
    meter.utterance_started(text, barge_in=barge_in)
    for n in range(frames + 10):
        meter.caller_frame(_frame(n < frames), RATE)
        clock.now += FRAME / RATE
    meter.utterance_ended()


def _agent(meter: HeardMeter, clock: Clock, *, frames: int, loud: bool = True) -> None:
    for _ in range(frames):
        meter.agent_audio(_frame(loud), RATE)
        clock.now += FRAME / RATE


def test_loud_span_finds_the_first_and_last_loud_window() -> None:
    chunk = np.zeros(FRAME, dtype=np.int16)
    assert loud_span(chunk, RATE) is None
    chunk[160:240] = 9000  # 10 ms .. 15 ms
    assert loud_span(chunk, RATE) == pytest.approx((0.010, 0.015))
    quiet = np.full(FRAME, int(ENERGY_THRESHOLD * 0.8), dtype=np.int16)
    assert loud_span(quiet, RATE) is None
    assert loud_span(np.full(30, 9000, dtype=np.int16), RATE) == pytest.approx((0.0, 30 / RATE))


def test_the_gap_runs_from_the_last_speech_sent_to_the_first_agent_audio_heard() -> None:
    clock = Clock()
    meter = HeardMeter(clock=clock)
    _agent(meter, clock, frames=50)  # the greeting: not a gap of any utterance
    clock.now += 1.0
    _speak(meter, clock, "hello", frames=40)  # speech ends 0.2 s before the call returns
    clock.now += 0.75
    _agent(meter, clock, frames=30)
    clock.now += 2.0
    _speak(meter, clock, "thanks", frames=20)
    clock.now += 0.4
    _agent(meter, clock, frames=10, loud=False)  # silence is not the answer
    _agent(meter, clock, frames=10)
    measured = meter.measurements()
    assert [m["text"] for m in measured] == ["hello", "thanks"]
    assert measured[0]["heard_gap_ms"] == pytest.approx(200 + 750, abs=0.2)
    assert measured[1]["heard_gap_ms"] == pytest.approx(200 + 400 + 200, abs=0.2)
    assert measured[0]["barge_in_ms"] is None and measured[1]["barge_in_ms"] is None


def test_no_gap_when_the_agent_never_answered_or_was_still_talking() -> None:
    clock = Clock()
    meter = HeardMeter(clock=clock)
    _speak(meter, clock, "anyone there?", frames=20)
    clock.now += 3.0
    _speak(meter, clock, "hello?", frames=20)  # the answer comes only after this one
    clock.now += 0.5
    _agent(meter, clock, frames=100)  # the agent talks from here…
    meter.utterance_started("over you")  # …and the caller stops while it still talks
    for n in range(30):
        meter.caller_frame(_frame(n < 10), RATE)
        meter.agent_audio(_frame(True), RATE)
        clock.now += FRAME / RATE
    meter.utterance_ended()
    gaps = [m["heard_gap_ms"] for m in meter.measurements()]
    assert gaps[0] is None
    assert gaps[1] == pytest.approx(700, abs=0.2)
    assert gaps[2] is None


def test_a_barge_in_measures_how_long_the_agent_talked_over_the_caller() -> None:
    clock = Clock()
    meter = HeardMeter(clock=clock)
    _speak(meter, clock, "explain everything", frames=30)
    clock.now += 0.6
    _agent(meter, clock, frames=100)  # 2 s of answer
    # The caller talks over it: its frames and the agent's interleave for 0.62 s.
    meter.utterance_started("stop please", barge_in=False)  # detected, not declared
    for n in range(60):
        meter.caller_frame(_frame(n < 50), RATE)
        if n < 31:
            meter.agent_audio(_frame(True), RATE)
        clock.now += FRAME / RATE
    meter.utterance_ended()
    clock.now += 0.9
    _agent(meter, clock, frames=20)
    first, second = meter.measurements()
    assert first["heard_gap_ms"] == pytest.approx(800, abs=0.2) and first["barge_in_ms"] is None
    assert second["barge_in_ms"] == pytest.approx(620, abs=0.2)
    assert second["heard_gap_ms"] == pytest.approx(200 + 900, abs=0.2)


def test_utterances_pair_with_caller_turns_in_order_or_not_at_all() -> None:
    measured = [{"heard_gap_ms": 900.0}, {"heard_gap_ms": None}, {"heard_gap_ms": 1200.0}]
    turns = [
        {"index": 3, "user_text": "thanks"},
        {"index": 0, "user_text": ""},
        {"index": 1, "user_text": "hello"},
        {"index": 2, "user_text": "tea?"},
    ]
    assert [i for i, _ in match_turns(measured, turns)] == [1, 2, 3]
    assert match_turns(measured, turns[:3]) == []  # a caller turn missing: nothing is guessed
    assert match_turns(measured[:2], turns) == []


def test_a_line_the_stt_split_gives_its_gap_to_its_last_piece() -> None:
    measured = [
        {"text": "Hello, what are your opening hours?", "heard_gap_ms": 900.0},
        {"text": "Do you have coffee and tea?", "heard_gap_ms": 1100.0},
        {"text": "Thank you, that is all for today.", "heard_gap_ms": 800.0},
    ]
    turns = [
        {"index": 0, "user_text": ""},
        {"index": 1, "user_text": "hello what are your opening hours"},
        {"index": 2, "user_text": "do you have"},
        {"index": 3, "user_text": "coffee and tea"},
        {"index": 4, "user_text": "thank you that is all for today"},
    ]
    pairs = match_turns(measured, turns)
    assert [(i, m["heard_gap_ms"]) for i, m in pairs] == [(1, 900.0), (3, 1100.0), (4, 800.0)]
    # A piece sharing no word with its line: which line it belongs to is a guess, so none.
    turns[2]["user_text"] = "uh"
    assert match_turns(measured, turns) == []
