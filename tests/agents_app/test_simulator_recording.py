"""`--record`: a stereo WAV per call, caller left, agent right, on one timeline."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np

from agents_app.runtime.simulator.recording import RECORD_RATE, CallRecording


def test_it_writes_caller_left_and_agent_right_with_a_transcript(tmp_path: Path) -> None:
    recording = CallRecording()
    recording.add_caller(np.full(22050 // 10, 1000, dtype=np.int16), 22050)  # 100 ms of caller
    time.sleep(0.3)
    recording.add_agent(np.full(RECORD_RATE // 10, -2000, dtype=np.int16), RECORD_RATE)  # later, agent
    recording.note("caller says hi")
    detail = {
        "session_id": "abc",
        "agent": "demo",
        "state": "ended",
        "turns": [
            {"index": 1, "user_text": "hi", "generated_text": "Hello there friend", "heard_text": "Hello",
             "interrupted": True, "interrupt_source": "vad", "tool_calls": [], "stages_ms": {"e2e": 700.0}},
        ],
    }  # fmt: skip
    wav_path, txt_path = recording.write(tmp_path, "call", detail)
    with wave.open(str(wav_path)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == RECORD_RATE
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)
    caller, agent = pcm[:, 0], pcm[:, 1]
    assert (caller == 1000).sum() > 0 and (caller == -2000).sum() == 0
    assert (agent == -2000).sum() > 0 and (agent == 1000).sum() == 0
    # the agent's audio starts after the caller's, as it was heard
    assert np.argmax(agent != 0) > np.argmax(caller != 0) + RECORD_RATE // 10
    text = txt_path.read_text()
    assert "caller: hi" in text and "agent:  Hello" in text and "interrupted (vad)" in text and "caller says hi" in text
