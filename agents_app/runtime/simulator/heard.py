"""What the simulated caller hears: per utterance, the gap before the agent answers.

Measured on the caller's own monotonic clock, from the audio it actually sends and
receives (both transports hand every frame to the call: `speak(on_frame=…)` and the
transport's `on_agent_audio`):

- the end of an utterance is the last sample above the energy threshold the caller sent
  (a frame is sent when it starts playing: real-time pacing, so sample k of a frame sent
  at t plays at t + k / rate);
- the agent is audible from the first received sample above the threshold (agent audio
  arrives as played, real-time paced); a quiet spell of `AGENT_QUIET_SECONDS` ends a
  stretch of agent audio;
- heard gap = the first audible agent sample after the utterance ended − the utterance's
  end. Not measured when the agent was still audible as the caller stopped, or did not
  answer before the caller spoke again;
- barge-in: an utterance that starts while the agent is audible talked over it; its
  `barge_in_ms` = the end of the agent audio it talked over − the utterance's first sample.

Matching to the platform's turns (`match_turns`): the turns with non-empty `user_text`,
in index order, are the caller's utterances, in order. A line the STT split into two turns
is found by the words the pieces share with it, and its gap goes to its last piece; a line
dropped or a turn lost with a crashed job would shift every pairing after it, so then
nothing is matched and the call says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Int16 RMS over a 5 ms window: ≈ −36 dBFS. Piper's speech peaks far above it; digital
# silence, resampling and codec residue stay below.
ENERGY_THRESHOLD = 500.0
WINDOW_SECONDS = 0.005
# Agent audio quiet this long ends a stretch (TTS pauses between sentences are shorter).
AGENT_QUIET_SECONDS = 0.3


def loud_span(samples: np.ndarray, rate: int, threshold: float = ENERGY_THRESHOLD) -> tuple[float, float] | None:
    """(start, end) in seconds within the chunk of its windows above the threshold, or None."""
    pcm = np.asarray(samples, dtype=np.float32).reshape(-1)
    window = max(1, int(rate * WINDOW_SECONDS))
    count = len(pcm) // window
    if count == 0:
        if not len(pcm) or float(np.sqrt(np.mean(pcm**2))) < threshold:
            return None
        return 0.0, len(pcm) / rate
    rms = np.sqrt(np.mean(pcm[: count * window].reshape(count, window) ** 2, axis=1))
    if len(pcm) > count * window:  # the tail shorter than a window
        rms = np.append(rms, np.sqrt(np.mean(pcm[count * window :] ** 2)))
    loud = np.flatnonzero(rms >= threshold)
    if not len(loud):
        return None
    return float(loud[0] * window / rate), float(min(len(pcm), (loud[-1] + 1) * window) / rate)


@dataclass
class Utterance:
    text: str
    started_at: float | None = None  # first loud sample sent
    ended_at: float | None = None  # last loud sample sent
    barged_in: bool = False  # the agent was audible when it started


@dataclass
class Stretch:
    """Agent audio without a quiet spell of AGENT_QUIET_SECONDS."""

    start: float
    end: float


@dataclass
class HeardMeter:
    clock: Callable[[], float] = time.monotonic
    utterances: list[Utterance] = field(default_factory=list)
    stretches: list[Stretch] = field(default_factory=list)
    _current: Utterance | None = None

    # -- inputs --------------------------------------------------------------------------
    def utterance_started(self, text: str, *, barge_in: bool = False) -> None:
        """`barge_in`: the caller means to talk over the agent (it is also detected)."""
        self._current = Utterance(text=text, barged_in=barge_in)
        self.utterances.append(self._current)

    def utterance_ended(self) -> None:
        self._current = None

    def caller_frame(self, samples: np.ndarray, rate: int) -> None:
        """A frame of the caller's speech, called as it is sent (it starts playing now)."""
        utterance = self._current
        span = loud_span(samples, rate)
        if utterance is None or span is None:
            return
        now = self.clock()
        if utterance.started_at is None:
            utterance.started_at = now + span[0]
            utterance.barged_in = utterance.barged_in or self._agent_audible_at(utterance.started_at)
        utterance.ended_at = now + span[1]

    def agent_audio(self, samples: np.ndarray, rate: int) -> None:
        """Agent audio as it arrives (played in real time from now)."""
        span = loud_span(samples, rate)
        if span is None:
            return
        now = self.clock()
        start, end = now + span[0], now + span[1]
        last = self.stretches[-1] if self.stretches else None
        if last is not None and start - last.end < AGENT_QUIET_SECONDS:
            last.end = max(last.end, end)
        else:
            self.stretches.append(Stretch(start, end))

    def _agent_audible_at(self, moment: float) -> bool:
        last = self.stretches[-1] if self.stretches else None
        return last is not None and last.start <= moment <= last.end + AGENT_QUIET_SECONDS

    # -- results -------------------------------------------------------------------------
    def measurements(self) -> list[dict[str, Any]]:
        """Per utterance, in order: text, heard_gap_ms (None: not measured), barge_in_ms."""
        out = []
        for number, utterance in enumerate(self.utterances):
            following = self.utterances[number + 1] if number + 1 < len(self.utterances) else None
            out.append(
                {
                    "text": utterance.text,
                    "heard_gap_ms": self._gap_ms(utterance, following),
                    "barge_in_ms": self._barge_in_ms(utterance),
                }
            )
        return out

    def _gap_ms(self, utterance: Utterance, following: Utterance | None) -> float | None:
        end = utterance.ended_at
        if end is None:
            return None
        for stretch in self.stretches:
            if stretch.end < end:
                continue
            if stretch.start < end:
                return None  # the agent was still talking when the caller stopped
            if following is not None and following.started_at is not None and stretch.start > following.started_at:
                return None  # no answer before the caller spoke again
            return round((stretch.start - end) * 1000.0, 1)
        return None

    def _barge_in_ms(self, utterance: Utterance) -> float | None:
        began, ended = utterance.started_at, utterance.ended_at
        if not utterance.barged_in or began is None or ended is None:
            return None
        # The agent audio it talked over: stretches under way before the caller stopped
        # (an answer to this utterance starts after it), pauses between sentences included.
        over = [s.end for s in self.stretches if s.start < ended and s.end + AGENT_QUIET_SECONDS >= began]
        return round(max(0.0, max(over) - began) * 1000.0, 1) if over else None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", (text or "").lower()))


def match_turns(measurements: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(turn index, measurement) pairs for the caller's turns, or [] when nothing is sure.

    Equal counts pair in order. More caller turns than utterances (the STT split a line
    where the caller paused) are grouped in order, each group one utterance, by the words
    the turns share with the lines said; the measurement goes to the group's last turn, the
    one the agent's answer followed. Every turn of a split group must share a word with its
    line, or nothing is matched. Fewer turns (a line dropped, a turn lost) match nothing.
    """
    caller_turns = [t for t in sorted(turns, key=lambda t: t["index"]) if t.get("user_text")]
    n, m = len(measurements), len(caller_turns)
    if m < n or n == 0:
        return []
    if m == n:
        return [(int(turn["index"]), measured) for turn, measured in zip(caller_turns, measurements, strict=True)]
    lines = [_words(measured.get("text", "")) for measured in measurements]
    heard = [_words(turn["user_text"]) for turn in caller_turns]
    # best[i][j]: the best shared-word score with turns[:j] grouped into lines[:i].
    worst = float("-inf")
    best = [[worst] * (m + 1) for _ in range(n + 1)]
    start = [[0] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(i, m - (n - i) + 1):
            for k in range(i - 1, j):  # line i-1 takes turns[k:j]
                if best[i - 1][k] == worst:
                    continue
                score = best[i - 1][k] + sum(len(heard[t] & lines[i - 1]) for t in range(k, j))
                if score > best[i][j]:
                    best[i][j], start[i][j] = score, k
    groups: list[range] = []
    j = m
    for i in range(n, 0, -1):
        groups.append(range(start[i][j], j))
        j = start[i][j]
    groups.reverse()
    for line, group in zip(lines, groups, strict=True):
        if len(group) > 1 and any(not (heard[t] & line) for t in group):
            return []
    return [
        (int(caller_turns[group[-1]]["index"]), measured) for group, measured in zip(groups, measurements, strict=True)
    ]
