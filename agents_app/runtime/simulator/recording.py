"""`--record DIR`: one stereo WAV per call (caller left, agent right, as heard) and its
transcript. Both channels sit on one wall-clock timeline, so overlaps (barge-ins) show.
"""

from __future__ import annotations

import json
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

RECORD_RATE = 16000
# Frames arriving this close to where the channel's audio ends are joined end to end
# (delivery jitter); further away they are placed at their arrival time.
_JITTER_SECONDS = 0.15


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == RECORD_RATE or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    n = max(1, round(len(samples) * RECORD_RATE / rate))
    x = np.linspace(0, len(samples) - 1, n)
    return np.interp(x, np.arange(len(samples)), samples.astype(np.float32)).astype(np.int16)


class _Track:
    def __init__(self) -> None:
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.end = 0

    def add(self, at: int, samples: np.ndarray) -> None:
        if abs(at - self.end) <= _JITTER_SECONDS * RECORD_RATE or at < self.end:
            at = self.end
        self.chunks.append((at, samples))
        self.end = at + len(samples)


class CallRecording:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.caller = _Track()
        self.agent = _Track()
        self.notes: list[tuple[float, str]] = []

    def _pos(self) -> int:
        return int((time.monotonic() - self.t0) * RECORD_RATE)

    def add_caller(self, samples: np.ndarray, rate: int) -> None:
        self.caller.add(self._pos(), _resample(samples, rate))

    def add_agent(self, samples: np.ndarray, rate: int) -> None:
        self.agent.add(self._pos(), _resample(samples, rate))

    def note(self, text: str) -> float:
        at = time.monotonic() - self.t0
        self.notes.append((at, text))
        return at

    def stereo(self) -> np.ndarray:
        length = max(self.caller.end, self.agent.end, 1)
        out = np.zeros((length, 2), dtype=np.int16)
        for channel, track in enumerate((self.caller, self.agent)):
            for at, samples in track.chunks:
                out[at : at + len(samples), channel] = samples
        return out

    def agent_seconds(self) -> float:
        return sum(len(s) for _, s in self.agent.chunks) / RECORD_RATE

    def write(self, directory: Path, stem: str, detail: dict[str, Any] | None) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        wav_path = directory / f"{stem}.wav"
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(RECORD_RATE)
            wav.writeframes(self.stereo().tobytes())
        txt_path = directory / f"{stem}.txt"
        txt_path.write_text(transcript(detail, self.notes), encoding="utf-8")
        (directory / f"{stem}.json").write_text(json.dumps(detail or {}, indent=2, default=str), encoding="utf-8")
        return wav_path, txt_path


def transcript(detail: dict[str, Any] | None, notes: list[tuple[float, str]]) -> str:
    lines: list[str] = []
    if detail:
        lines.append(f"session {detail.get('session_id')}  agent {detail.get('agent')}  state {detail.get('state')}")
        lines.append("")
        for turn in detail.get("turns") or []:
            if turn.get("user_text"):
                lines.append(f"[{turn['index']}] caller: {turn['user_text']}")
            agent_text = turn.get("heard_text") if turn.get("interrupted") else turn.get("generated_text")
            suffix = (
                f"  [interrupted ({turn.get('interrupt_source')}); generated: {turn.get('generated_text')}]"
                if turn.get("interrupted")
                else ""
            )
            lines.append(f"[{turn['index']}] agent:  {agent_text or ''}{suffix}")
            for call in turn.get("tool_calls") or []:
                lines.append(f"      tool {call.get('name')} {call.get('status')} replayed={call.get('replayed')}")
            stages = {k: v for k, v in (turn.get("stages_ms") or {}).items() if v is not None}
            if stages:
                lines.append("      ms " + " ".join(f"{k}={v:.0f}" for k, v in stages.items()))
        lines.append("")
    lines.append("caller timeline:")
    lines.extend(f"  {at:7.2f}s  {text}" for at, text in notes)
    return "\n".join(lines) + "\n"
