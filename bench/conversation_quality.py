"""Conversation quality, agent configuration `previous` vs `current` (issue 28): words, turn-taking.

What the caller's words became and how the agent took turns, both sides in the same run.

Both sides run the real platform pipeline over the local transport, as
bench/voice_calls.py `run_platform` does (the platform's entrypoint, a real AgentSession,
Silero VAD, the agent's STT, the offline LLM stand-in, Piper TTS), each with a benchmark
agent of its own:

- `previous` (bench-cq-previous): `stt_model="pocketsphinx"` (PocketSphinx's general
  language model, open vocabulary, no phrase list), `turn_detection="vad"`,
  `ignore_backchannels=False`, `barge_in_min_speech_ms=500`;
- `current` (bench-cq-current): the Agent defaults (`stt_model=""`: Moonshine tiny-en,
  `turn_detection="smart_turn"`, `turn_eagerness="balanced"`, `ignore_backchannels=True`,
  `barge_in_min_speech_ms=800`).

Rounds alternate which side goes first. Per side and round, two calls with a scripted
caller whose own lines Piper speaks (noise 0: the same samples every run), over the local
transport with the local agent host's few LSB of input noise:

1. the Piper-band call: the ten WER lines (the last nine each followed by a barge-in over
   the agent's answer), then the four pause lines;
2. the telephone call: the same WER lines band-limited to 300–3400 Hz and sent at 8 kHz
   (the local transport's input resamples any rate to its 16 kHz: `LocalCall.push_caller_frame`).

Measured, per side:

- **WER** of the stored caller words (the session's Turn rows' `user_text`) against the
  reference lines, both bands; words normalised (case, punctuation, numbers as words:
  `normalize`). Each stored caller turn is given to one line (`assign_turns`): in order,
  never to a line said after the turn was committed, by the words it shares with the line
  and else by time (`Turn.started_at` against the caller's own clock, one process). A line
  split in two is scored joined; a piece committed late still counts for its own line.
- **Pause splits**: lines with a 0.7 s silence between two halves; a split = more than one
  caller turn stored for the line, or agent audio starting between the halves' ends.
- **Backchannel false interruptions**: 1 s into the agent's answer to a line (the stand-in
  LLM echoes it: "Thanks for calling Acme. You said: … How else can I help?", 4.5–6 s of
  speech) the caller says a backchannel, and cuts the answer itself 2.5 s later; a false
  interruption = the answer's Turn stored as interrupted by anything but that cut (source
  `client`), or a caller turn stored for the backchannel (`stored`), or the caller hearing
  the agent go quiet for `STOP_QUIET_SECONDS` before its cut (`audio_stopped`: a stop, or
  a pause livekit would have resumed from after its 2 s false-interruption timeout).
- **Real-interruption misses**: the same with "Stop." and the like; honoured = the agent
  audio the caller heard went quiet within 2 s of the caller's first voiced sample and
  the answer's Turn is stored as interrupted by the caller (not by the benchmark's cut).
  A trial counts only when said over the answer to its own line (`trial_invalid`).
- **Heard latency**: p50/p99 (nearest rank, voiceplatform.stats) of the simulated caller's
  `HeardMeter` gap over the WER lines of both bands (not the pause lines, not the
  barge-ins), with the medians of the same turns' stored stages (eou, stt, llm_ttft,
  tts_ttfb, e2e).

To keep a run short, the caller cuts each answer it does not barge into after hearing its
first `HEAR_SECONDS`, with the platform's client interrupt (`JobRuntime.interrupt`, what
the call page's button does): none of the measures needs the rest of the echo.
`--full-answers` lets those play out.

Prints one JSON object (progress on stderr): per side the configuration asked for and
what the runtime ran (`runtime`: STT, turn detection), the counts, the rates, the failures
(reference vs stored), and `targets` (booleans): WER ≤ 5 % Piper, ≤ 8 % telephone, pause
splits 0, backchannel interruptions 0, real interruptions honoured ≥ 95 %, heard p50 ≤
600 ms and p99 ≤ 1000 ms (local transport).

Usage: VOICE_DEV_DEFAULTS=true .venv/bin/python bench/conversation_quality.py [--rounds 1] [--quick]
       [--full-answers] [--dump calls.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from voiceplatform.stats import nearest_rank_percentile as percentile

# --- the caller's script -----------------------------------------------------------------
# Numbers are written as words, the way the caller says them.
WER_LINES = (
    "My account number is four five seven two nine one.",
    "Please send the parcel to twelve Baker Street.",
    "My name is Sarah Johnson.",
    "The delivery should arrive on the twenty third of March.",
    "Can you call me back at seven thirty tomorrow morning?",
    "My flight number is eight one six and it leaves at noon.",
    "We moved to forty two Maple Avenue in June.",
    "I want to speak to Doctor Patel about my prescription.",
    "Please book two tickets to Boston for the fifth of May.",
    "My phone number is five five five two one eight nine.",
)
PAUSE_LINES = (
    ("I want to move my appointment", "to Thursday afternoon please."),
    ("The new address is", "twenty one Oak Lane."),
    ("I would like to pay", "with my credit card."),
    ("My reference number is three eight", "one four six."),
)
PAUSE_SECONDS = 0.7
# (what the caller means, what Piper is given). Piper spells "Mm-hmm.", "Mhm." and "Mmhm."
# out as letters ("em em aitch em") and clips "Uh-huh." to "uh"; of the spellings tried,
# Moonshine heard "Uhm hmm." as "Mm."/"Mm-hmm." and "Uh huh." as "Uh-huh." (or "Ah, how?").
BACKCHANNELS = (
    ("Mm-hmm", "Uhm hmm."),
    ("Yeah", "Yeah."),
    ("Okay", "Okay."),
    ("Right", "Right."),
    ("Uh-huh", "Uh huh."),
)
INTERRUPTIONS = (
    "Stop.",
    "Wait, no.",
    "Hold on, I have a question.",
    "Actually, can you change the address?",
)

SIDES: dict[str, dict[str, Any]] = {
    "previous": {
        "slug": "bench-cq-previous",
        "fields": {
            "stt_model": "pocketsphinx",
            "turn_detection": "vad",
            "turn_eagerness": "balanced",
            "ignore_backchannels": False,
            "barge_in_min_speech_ms": 500,
        },
    },
    "current": {
        "slug": "bench-cq-current",
        "fields": {
            "stt_model": "",
            "turn_detection": "smart_turn",
            "turn_eagerness": "balanced",
            "ignore_backchannels": True,
            "barge_in_min_speech_ms": 800,
        },
    },
}
INSTRUCTIONS = "You are the support agent of Acme. Be brief."
GREETING = "Hello, this is Acme support."

TARGETS = {"wer_piper": 0.05, "wer_telephone": 0.08, "honoured": 0.95, "heard_p50_ms": 600.0, "heard_p99_ms": 1000.0}
TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_RATE = 8000

# The caller's timing.
GAP_SECONDS = 0.3  # of quiet before each line (the agent saying nothing more)
HEAR_SECONDS = 0.25  # of a normal answer, before the caller cuts it
BARGE_AFTER_SECONDS = 1.0  # into the answer, the caller's barge-in starts
BACKCHANNEL_WINDOW_SECONDS = 2.5  # after the backchannel starts, before the caller cuts the answer
INTERRUPT_LIMIT_MS = 2000.0  # an interruption must silence the agent within this
# Agent audio quiet this long has stopped: the pauses between an answer's sentences (0.3–0.4
# s) and gaps where Piper fell behind the playout under load (up to ~0.65 s seen) are shorter.
STOP_QUIET_SECONDS = 1.0
INTERRUPT_WAIT_SECONDS = 3.0  # after the interruption's end, before a missed one is cut
ANSWER_TIMEOUT_SECONDS = 8.0  # after a line's end, for the agent's answer to start
LATE_ANSWER_SECONDS = 1.0  # after a pause line or a trial, for a second answer to start
STAGES = ("eou", "stt", "llm_ttft", "tts_ttfb", "e2e")  # the stored turn's stages reported (medians)


# --- words ---------------------------------------------------------------------------------
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_CONTRACTIONS = {
    "i'm": "i am",
    "i'd": "i would",
    "i'll": "i will",
    "i've": "i have",
    "it's": "it is",
    "that's": "that is",
    "what's": "what is",
    "there's": "there is",
    "we're": "we are",
    "you're": "you are",
    "let's": "let us",
    "don't": "do not",
    "doesn't": "does not",
    "isn't": "is not",
    "can't": "cannot",
    "won't": "will not",
}
_ABBREVIATIONS = {"ok": "okay", "dr": "doctor", "st": "street", "ave": "avenue", "rd": "road", "mr": "mister"}
# Old hyphenated spellings of one word (Moonshine writes "to-morrow"): joined before hyphens split words.
_HYPHENATED = re.compile(r"\bto-(day|night|morrow)\b")
_TOKEN_RE = re.compile(r"\d+:\d\d|\d+\.\d+|\d+(?:st|nd|rd|th)\b|\d+|[a-z]+(?:'[a-z]+)*")


def number_words(n: int) -> list[str]:
    """0–99 as words ("forty two"); larger numbers digit by digit."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    return [_ONES[int(d)] for d in str(n)]


def ordinal_words(n: int) -> list[str]:
    words = number_words(n)
    last = words[-1]
    words[-1] = _ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return words


def _token_words(token: str) -> list[str]:
    if ":" in token:  # a time: 7:30 → seven thirty, 7:00 → seven, 7:05 → seven oh five
        hours, minutes = token.split(":")
        words = number_words(int(hours))
        if minutes != "00":
            words += (["oh"] if minutes[0] == "0" else []) + number_words(int(minutes))
        return words
    if "." in token:
        whole, fraction = token.split(".")
        return [*_token_words(whole), "point", *(_ONES[int(d)] for d in fraction)]
    if token[-2:] in ("st", "nd", "rd", "th") and token[:-2].isdigit():
        return ordinal_words(int(token[:-2]))
    if token.isdigit():
        # Three digits or more, or a leading zero, are said digit by digit (numbers, codes).
        if len(token) >= 3 or (len(token) > 1 and token[0] == "0"):
            return [_ONES[int(d)] for d in token]
        return number_words(int(token))
    token = _ABBREVIATIONS.get(token, token)
    return _CONTRACTIONS.get(token, token).split()


def normalize(text: str) -> list[str]:
    """The words of `text` for WER: lower case, no punctuation, numbers as words (digit
    strings of 3+ digits digit by digit, as the lines say them), common contractions and
    abbreviations spelled out, hyphens between words (but "to-morrow" is "tomorrow")."""
    text = (text or "").lower().replace("\u2019", "'").replace("&", " and ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = _HYPHENATED.sub(r"to\1", text)
    text = re.sub(r"[-/]", " ", text)
    return [word for token in _TOKEN_RE.findall(text) for word in _token_words(token)]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions (word-level Levenshtein distance)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        row = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = row
    return previous[-1]


def wer(pairs: list[tuple[str, str]]) -> float | None:
    """Corpus WER of (reference, hypothesis) pairs: all errors over all reference words."""
    words = errors = 0
    for reference, hypothesis in pairs:
        ref = normalize(reference)
        words += len(ref)
        errors += word_errors(ref, normalize(hypothesis))
    return round(errors / words, 4) if words else None


# --- audio ---------------------------------------------------------------------------------
def band_limit(samples: np.ndarray, rate: int, low: float, high: float, *, edge: float = 50.0) -> np.ndarray:
    """`samples` (float) with only `low`..`high` Hz (raised-cosine edges `edge` Hz wide), by FFT."""
    pcm = np.asarray(samples, dtype=np.float64).reshape(-1)
    spectrum = np.fft.rfft(pcm)
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / rate)
    gain = np.zeros_like(freqs)
    gain[(freqs >= low) & (freqs <= high)] = 1.0
    rising = (freqs > low - edge) & (freqs < low)
    gain[rising] = 0.5 - 0.5 * np.cos(np.pi * (freqs[rising] - (low - edge)) / edge)
    falling = (freqs > high) & (freqs < high + edge)
    gain[falling] = 0.5 + 0.5 * np.cos(np.pi * (freqs[falling] - high) / edge)
    return np.fft.irfft(spectrum * gain, n=len(pcm))


def telephone_band(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Telephone-band speech: 300–3400 Hz, resampled to 8 kHz (int16). The band-limited
    spectrum is cut at 4 kHz and transformed back at the new length (Fourier resampling:
    nothing above 3.45 kHz remains to alias)."""
    low, high = TELEPHONE_BAND_HZ
    pcm = np.asarray(samples, dtype=np.float64).reshape(-1)
    if rate != TELEPHONE_RATE:
        pcm = band_limit(pcm, rate, low, high)
        spectrum = np.fft.rfft(pcm)
        length = max(1, round(len(pcm) * TELEPHONE_RATE / rate))
        spectrum = spectrum[: length // 2 + 1]
        out = np.fft.irfft(spectrum, n=length) * (length / len(pcm))
    else:
        out = band_limit(pcm, rate, low, high)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16), TELEPHONE_RATE


# --- outcomes (pure: tested in tests/test_bench_conversation_quality.py) --------------------
@dataclass
class Said:
    """One caller utterance as it happened (times: `wall` on time.time(), the rest monotonic)."""

    kind: str  # wer | pause | backchannel | interrupt
    reference: str
    wall_start: float
    start: float
    end: float  # the audio's end (pushed at `start`, played in real time)
    half_end: float | None = None  # pause lines: the first half's last loud sample
    answered: bool = True  # the agent started speaking before the caller's next move
    heard_gap_ms: float | None = None
    barged_in: bool = False  # the agent was audible when it started (HeardMeter)
    barge_in_ms: float | None = None  # its first voiced sample → the end of agent audio it talked over
    voiced_at: float | None = None  # its first voiced sample (HeardMeter)
    trigger: int | None = None  # barge-ins: the index of the line whose answer it talked over
    cut_at: float | None = None  # barge-ins: when the caller cut the answer itself (None: it had stopped)


def agent_stopped_at(
    stretches: list[tuple[float, float]],
    since: float,
    until: float | None,
    *,
    new_answer_at: float | None = None,
    quiet: float = STOP_QUIET_SECONDS,
) -> float | None:
    """When the agent audio the caller heard (HeardMeter stretches, in order) stopped after
    `since` (a barge-in's first voiced sample), at least `quiet` seconds before the caller's
    own cut at `until` (None: it never cut): the end of the last sound before a silence of
    at least `quiet` seconds, or before a new answer (audio starting at or after
    `new_answer_at`, when the barge-in was committed as a caller turn, which the agent then
    answers); None when it did not. Quiet spells shorter than `quiet` inside one answer are
    pauses between its sentences or the TTS falling behind: audio that ended less than that
    before the caller's cut was still under way."""
    for k, (_start, end) in enumerate(stretches):
        if end < since:
            continue
        if until is not None and until - end < quiet:
            return None  # still under way when the caller cut it
        following = stretches[k + 1][0] if k + 1 < len(stretches) else float("inf")
        if following - end >= quiet or (new_answer_at is not None and following >= new_answer_at):
            return end
    return None


# Words too common to tell two lines apart.
_COMMON = frozenset("the a an to is i it and of on in at for my you".split())
# What a turn committed in a line's time window scores for that line (a shared word: 1).
WINDOW_BONUS = 0.5


def _content(text: str) -> set[str]:
    return set(normalize(text)) - _COMMON


def assign_turns(said: list[Said], turns: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The caller turns each utterance became, in order.

    Each stored caller turn (non-empty user_text, in index order) goes to one utterance,
    never to one said after the turn was committed (turns committed before the first
    utterance are not the caller's lines), and in the order said (a later turn
    never goes to an earlier utterance than the turn before it). Among those assignments
    the one chosen shares the most words with the lines, a turn committed inside an
    utterance's time window (its start → the next one's) scoring WINDOW_BONUS for it: so a
    turn is its window's unless its words say it is a lagging piece of an earlier line (a
    slow STT can commit a line's second half after the caller has started the next one).
    """
    groups: list[list[dict[str, Any]]] = [[] for _ in said]
    if not said:
        return groups
    caller = [
        t
        for t in sorted(turns, key=lambda t: t.get("index", 0))
        if (t.get("user_text") or "").strip() and (t.get("started_at") is None or t["started_at"] >= said[0].wall_start)
    ]
    if not caller:
        return groups
    n = len(said)
    lines = [_content(s.reference) for s in said]
    starts = [s.wall_start for s in said]

    def score(turn: dict[str, Any], i: int) -> float | None:
        at = turn.get("started_at")
        if at is not None and at < starts[i]:
            return None  # committed before the utterance began
        shared = len(_content(turn["user_text"]) & lines[i])
        inside = at is None or i + 1 == n or at < starts[i + 1]
        return shared + (WINDOW_BONUS if inside else 0.0)

    worst = float("-inf")
    # best[i]: the best total with the turns so far, the last one going to utterance i.
    best = [worst] * n
    back: list[list[int]] = []
    for j, turn in enumerate(caller):
        row, came = [worst] * n, [-1] * n
        prefix, prefix_at = (0.0, -1) if j == 0 else (worst, -1)
        for i in range(n):
            if j > 0 and best[i] > prefix:
                prefix, prefix_at = best[i], i
            value = score(turn, i)
            if value is not None and prefix > worst:
                row[i], came[i] = prefix + value, prefix_at
        best = row
        back.append(came)
    # Every turn may go to the first utterance, so some assignment always fits.
    last = max(range(n), key=lambda i: (best[i], -i))
    for j in range(len(caller) - 1, -1, -1):
        groups[last].insert(0, caller[j])
        last = back[j][last]
    return groups


def agent_started_between(stretches: list[tuple[float, float]], start: float, end: float) -> bool:
    """Agent audio (HeardMeter stretches, (start, end)) began within (start, end]."""
    return any(start < s <= end for s, _ in stretches)


def is_split(caller_turns: int, agent_started_between_halves: bool) -> bool:
    return caller_turns > 1 or agent_started_between_halves


def cut_by_caller(answer: dict[str, Any] | None) -> bool:
    """The answer's turn is stored as interrupted by someone other than the benchmark's own
    cut (the client interrupt, source `client`)."""
    return bool(answer and answer.get("interrupted") and answer.get("interrupt_source") != "client")


def false_interruption(
    answer: dict[str, Any] | None, backchannel_turns: list[dict[str, Any]], stop_ms: float | None = None
) -> list[str]:
    """Why a backchannel counts as a false interruption ([] = it did not): the answer's turn
    stored as interrupted by it, a caller turn stored for it, or (`stop_ms`, by ear) the
    agent going quiet after it before the caller cut the answer itself: a pause that the
    agent would have resumed from after livekit's false-interruption timeout is still a
    stop the caller hears."""
    reasons = []
    if answer is not None and cut_by_caller(answer):
        reasons.append(f"answer stored as interrupted (source {answer.get('interrupt_source') or '?'})")
    if backchannel_turns:
        reasons.append("caller turn stored: " + " | ".join(repr(t["user_text"]) for t in backchannel_turns))
    if stop_ms is not None:
        reasons.append(f"the agent went quiet {stop_ms:.0f} ms after it began")
    return reasons


def interruption_honoured(stop_ms: float | None, answer: dict[str, Any] | None) -> tuple[bool, str]:
    """(honoured, why not): the agent audio stopped within INTERRUPT_LIMIT_MS of the caller's
    first voiced sample (`stop_ms`, None: it did not stop before the benchmark cut it), and
    the answer is stored as interrupted by the caller."""
    if stop_ms is None:
        return False, "the agent went on speaking until the benchmark cut it"
    if stop_ms > INTERRUPT_LIMIT_MS:
        return False, f"the agent went on speaking {stop_ms:.0f} ms after the caller started"
    if answer is not None and not cut_by_caller(answer):
        return False, "audio stopped, but the answer was not interrupted (paused, then resumed or cut by the benchmark)"
    return True, ""


def trial_invalid(barge: Said, answer: dict[str, Any] | None) -> str:
    """Why a barge-in trial says nothing ('' = it is valid): it must have been said over the
    answer to its own line (the line's turn committed before it began, the agent audible)."""
    if answer is None:
        return "no caller turn stored for the line"
    if answer.get("started_at") is not None and answer["started_at"] >= barge.wall_start:
        return "the line's turn was committed after the barge-in began (it talked over something else)"
    if not barge.barged_in:
        return "the agent was not audible when it began"
    return ""


def rate(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def side_targets(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, as booleans (a missing measure fails its target)."""

    def at_most(value: float | None, limit: float) -> bool:
        return value is not None and value <= limit

    honoured = summary["real_interruptions"]["honoured_rate"]
    return {
        "wer_piper_le_5pct": at_most(summary["wer"]["piper"], TARGETS["wer_piper"]),
        "wer_telephone_le_8pct": at_most(summary["wer"]["telephone"], TARGETS["wer_telephone"]),
        "pause_splits_0": summary["pause_splits"]["lines"] > 0 and summary["pause_splits"]["split"] == 0,
        "backchannel_interruptions_0": summary["backchannels"]["trials"] > 0
        and summary["backchannels"]["false_interruptions"] == 0,
        "real_interruptions_honoured_ge_95pct": honoured is not None and honoured >= TARGETS["honoured"],
        "heard_p50_le_600ms": at_most(summary["heard_ms"]["p50"], TARGETS["heard_p50_ms"]),
        "heard_p99_le_1000ms": at_most(summary["heard_ms"]["p99"], TARGETS["heard_p99_ms"]),
    }


@dataclass
class Tally:
    """One side's outcomes, over all its calls and rounds."""

    wer_pairs: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {"piper": [], "telephone": []})
    pause_lines: int = 0
    pause_splits: int = 0
    backchannel_trials: int = 0
    false_interruptions: int = 0
    backchannel_audio_stopped: int = 0
    backchannel_stored: int = 0
    interrupt_trials: int = 0
    honoured: int = 0
    stop_ms: list[float] = field(default_factory=list)
    heard_ms: list[float] = field(default_factory=list)
    heard_by_set: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    unanswered: int = 0
    invalid_trials: int = 0
    caller_turns: int = 0
    agent_turns: int = 0
    backchannel_events: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add_call(
        self, band: str, said: list[Said], turns: list[dict[str, Any]], stretches: list[tuple[float, float]]
    ) -> None:
        """Score one call: its utterances, its stored turns (started_at in epoch seconds) and
        the agent audio the caller heard."""
        self.caller_turns += len([t for t in turns if (t.get("user_text") or "").strip()])
        self.agent_turns += len([t for t in turns if (t.get("generated_text") or t.get("heard_text") or "").strip()])
        windows = assign_turns(said, turns)
        for i, s in enumerate(said):
            mine = windows[i]
            stored = " ".join(t["user_text"].strip() for t in mine)
            if not s.answered and s.kind in ("wer", "pause"):
                self.unanswered += 1
                self.failures.append({"kind": "no_answer", "said": s.reference, "stored": stored})
            if s.kind == "wer" and s.heard_gap_ms is not None:
                self.heard_ms.append(s.heard_gap_ms)
                self.heard_by_set.setdefault(band, []).append(s.heard_gap_ms)
                for stage in STAGES:
                    if mine and mine[-1].get(f"{stage}_ms") is not None:
                        self.stages[stage].append(float(mine[-1][f"{stage}_ms"]))
            if s.kind == "wer":
                self.wer_pairs[band].append((s.reference, stored))
                errors = word_errors(normalize(s.reference), normalize(stored))
                if errors:
                    self.failures.append(
                        {"kind": f"wer_{band}", "reference": s.reference, "stored": stored, "errors": errors}
                    )
            elif s.kind == "pause":
                self.pause_lines += 1
                between = s.half_end is not None and agent_started_between(stretches, s.half_end, s.end)
                if is_split(len(mine), between):
                    self.pause_splits += 1
                    self.failures.append(
                        {
                            "kind": "pause_split",
                            "reference": s.reference,
                            "stored": [t["user_text"] for t in mine],
                            "agent_spoke_between_halves": between,
                        }
                    )
            elif s.kind in ("backchannel", "interrupt"):
                answer = windows[s.trigger][-1] if s.trigger is not None and windows[s.trigger] else None
                invalid = trial_invalid(s, answer)
                if invalid:
                    self.invalid_trials += 1
                    self.failures.append({"kind": f"{s.kind}_trial_invalid", "said": s.reference, "why": invalid})
                    continue
                # Its own caller turn (if stored), on the caller's monotonic clock.
                committed = [t["started_at"] - (s.wall_start - s.start) for t in mine if t.get("started_at")]
                stopped_at = agent_stopped_at(
                    stretches, s.voiced_at or s.start, s.cut_at, new_answer_at=min(committed) if committed else None
                )
                stop_ms = None if stopped_at is None else round((stopped_at - (s.voiced_at or s.start)) * 1000, 1)
                if s.kind == "backchannel":
                    self.backchannel_trials += 1
                    stopped = stop_ms is not None
                    self.backchannel_audio_stopped += stopped
                    self.backchannel_stored += bool(mine) or cut_by_caller(answer)
                    reasons = false_interruption(answer, mine, stop_ms)
                    if reasons:
                        self.false_interruptions += 1
                        self.failures.append(
                            {
                                "kind": "backchannel",
                                "said": s.reference,
                                "why": reasons,
                                "answer_heard": (answer or {}).get("heard_text", ""),
                            }
                        )
                else:
                    self.interrupt_trials += 1
                    if stop_ms is not None:
                        self.stop_ms.append(stop_ms)
                    honoured, why = interruption_honoured(stop_ms, answer)
                    self.honoured += honoured
                    if not honoured:
                        self.failures.append(
                            {
                                "kind": "interruption_missed",
                                "said": s.reference,
                                "stored": stored,
                                "why": why,
                                "answer_heard": (answer or {}).get("heard_text", ""),
                            }
                        )

    def summary(self) -> dict[str, Any]:
        heard = self.heard_ms
        summary = {
            "turns": {"caller": self.caller_turns, "agent": self.agent_turns},
            "wer": {
                "piper": wer(self.wer_pairs["piper"]),
                "telephone": wer(self.wer_pairs["telephone"]),
                "lines": {band: len(pairs) for band, pairs in self.wer_pairs.items()},
                "reference_words": {
                    band: sum(len(normalize(r)) for r, _ in pairs) for band, pairs in self.wer_pairs.items()
                },
            },
            "pause_splits": {
                "lines": self.pause_lines,
                "split": self.pause_splits,
                "rate": rate(self.pause_splits, self.pause_lines),
            },
            "backchannels": {
                "trials": self.backchannel_trials,
                "false_interruptions": self.false_interruptions,
                "rate": rate(self.false_interruptions, self.backchannel_trials),
                # Of them: stored as such (the answer's turn interrupted, or a caller turn), and
                # heard (the agent went quiet, stopped or paused).
                "stored": self.backchannel_stored,
                "audio_stopped": self.backchannel_audio_stopped,
                "backchannel_events": self.backchannel_events,
            },
            "real_interruptions": {
                "trials": self.interrupt_trials,
                "honoured": self.honoured,
                "honoured_rate": rate(self.honoured, self.interrupt_trials),
                "miss_rate": rate(self.interrupt_trials - self.honoured, self.interrupt_trials),
                # The caller's first voiced sample → the agent went quiet (trials where it did).
                "stopped_after_ms_p50": percentile(self.stop_ms, 50),
                "stopped_after_ms_max": max(self.stop_ms) if self.stop_ms else None,
            },
            "heard_ms": {
                "turns": len(heard),
                "p50": percentile(heard, 50),
                "p99": percentile(heard, 99),
                "p50_by_set": {name: percentile(values, 50) for name, values in sorted(self.heard_by_set.items())},
                # The agent's own stages of the same turns (eou: the caller's end of speech as
                # the VAD placed it → turn committed, stt inside it; then the LLM's first
                # token, TTS's first audio; e2e: → playout started).
                "stages_p50": {stage: percentile(values, 50) for stage, values in self.stages.items()},
            },
            "unanswered_lines": self.unanswered,
            "invalid_trials": self.invalid_trials,
        }
        summary["targets"] = side_targets(summary)
        summary["failures"] = self.failures
        return summary


# --- the calls (the real pipeline) ---------------------------------------------------------
def log(message: str) -> None:
    print(f"[conversation_quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def setup_agent(side: str) -> Any:
    """The side's benchmark agent, configured as the side says, with a published prompt."""
    from agents_app.models import Agent
    from agents_app.services import prompt_draft_create, prompt_publish

    spec = SIDES[side]
    agent, _ = Agent.objects.get_or_create(slug=spec["slug"], defaults={"name": f"Conversation quality ({side})"})
    wanted = {
        "stt_provider": "offline",
        "llm_provider": "offline",
        "tts_provider": "offline",
        "stt_phrases": [],
        "stt_fallbacks": [],
        "llm_fallbacks": [],
        "tts_fallbacks": [],
        "allow_interruptions": True,
        **spec["fields"],
    }
    changed = [name for name, value in wanted.items() if getattr(agent, name) != value]
    for name in changed:
        setattr(agent, name, wanted[name])
    if changed:
        agent.save(update_fields=changed)
    if not agent.prompt_versions.filter(status="published").exists():
        prompt_publish(version=prompt_draft_create(agent=agent, instructions=INSTRUCTIONS, greeting=GREETING))
    return agent


def new_session(slug: str) -> str:
    from agents_app.models import Agent
    from sessions_app.models import VoiceSession

    agent = Agent.objects.get(slug=slug)
    version = agent.prompt_versions.filter(status="published").first()
    session = VoiceSession.objects.create(
        caller_id="bench", room_name=f"bench-cq-{uuid.uuid4()}", agent=agent, prompt_version=version
    )
    return str(session.id)


def stored_turns(session_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The session's Turn rows (started_at as epoch seconds) and its event types."""
    from sessions_app.models import SessionEvent, Turn

    fields = (
        "index",
        "user_text",
        "generated_text",
        "heard_text",
        "interrupted",
        "interrupt_source",
        "started_at",
        *(f"{stage}_ms" for stage in STAGES),
    )
    turns = [dict(row) for row in Turn.objects.filter(session_id=session_id).order_by("index").values(*fields)]
    for turn in turns:
        turn["started_at"] = turn["started_at"].timestamp() if turn["started_at"] is not None else None
    events = list(SessionEvent.objects.filter(session_id=session_id).values_list("type", flat=True))
    return turns, events


def describe_runtime(runtime: Any) -> dict[str, Any]:
    """What the job actually ran: the STT and the session's turn detection and barge-in."""
    out: dict[str, Any] = {}
    providers = getattr(runtime, "providers", None)
    if providers is not None:
        out["stt"] = providers.describe().get("stt")
    session = getattr(runtime, "session", None)
    if session is not None:
        detection = getattr(session, "turn_detection", None)
        if detection is not None and not isinstance(detection, str):
            detection = f"{getattr(detection, 'provider', '?')}:{getattr(detection, 'model', type(detection).__name__)}"
        out["turn_detection"] = detection
        try:
            interruption = dict(session.options.interruption)
        except Exception:
            interruption = {}
        out["interruption"] = {
            k: interruption.get(k) for k in ("mode", "min_duration", "min_words", "false_interruption_timeout")
        }
    return out


@dataclass
class Caller:
    """The scripted caller of one call: speaks, listens with the simulated caller's
    HeardMeter, and cuts answers it does not need with the platform's client interrupt."""

    call: Any
    full_answers: bool = False
    said: list[Said] = field(default_factory=list)
    meter: Any = None

    def __post_init__(self) -> None:
        from agents_app.runtime.simulator.heard import HeardMeter

        self.meter = HeardMeter()

    async def listen(self) -> None:
        async for frame in self.call.agent_frames():
            self.meter.agent_audio(np.frombuffer(frame.data, dtype=np.int16), frame.sample_rate)

    async def say(self, kind: str, reference: str, audio: tuple[np.ndarray, int], **extra: Any) -> Said:
        """Speak `audio` (pushed at once; the transport plays it in real time) and return
        once the agent has heard all of it."""
        samples, sample_rate = audio
        self.meter.utterance_started(reference)
        start, wall = time.monotonic(), time.time()
        self.meter.caller_frame(samples, sample_rate)
        self.call.push_caller_audio(samples, sample_rate)
        self.meter.utterance_ended()
        duration = len(samples) / sample_rate
        said = Said(kind=kind, reference=reference, wall_start=wall, start=start, end=start + duration, **extra)
        if said.half_end is not None:
            said.half_end += start
        self.said.append(said)
        deadline = start + duration + 2.0
        while self.call.caller_audio_pending_seconds > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, said.end - time.monotonic()) + 0.02)
        return said

    async def answer_started(self, timeout: float = ANSWER_TIMEOUT_SECONDS) -> bool:
        try:
            await self.call.wait_agent_speaking(True, timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def answer_to(self, said: Said, timeout: float = ANSWER_TIMEOUT_SECONDS) -> bool:
        """Wait for the agent to speak its answer to `said`, cutting any answer to an earlier
        line first (a slow STT can commit a line late). The caller knows what it asked; the
        benchmark asks the job which caller turn the agent is answering."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not await self.answer_started(timeout=remaining):
                return False
            tracker = getattr(self.call.job, "tracker", None)
            current = tracker.current if tracker is not None else None
            if current is None or current.started_at >= said.wall_start:
                return True
            await self.hear_answer()
        return False

    async def cut(self) -> None:
        """End the agent's speech now (the platform's client interrupt) and wait for quiet."""
        if self.call.agent_speaking and self.call.job is not None:
            self.call.job.interrupt("client")
        try:
            await self.call.wait_agent_speaking(False, timeout=10)
        except TimeoutError:
            log("the agent did not stop after a client interrupt")

    async def hear_answer(self) -> None:
        """A normal answer: hear its start, then cut it (or let it play: --full-answers)."""
        if self.full_answers:
            try:
                await self.call.wait_agent_speaking(False, timeout=90)
            except TimeoutError:
                log("an answer did not end within 90 s")
            return
        await asyncio.sleep(HEAR_SECONDS)
        await self.cut()

    async def settle(self, quiet: float = GAP_SECONDS) -> None:
        """Cut whatever the agent says until it has been quiet for `quiet` seconds."""
        for _ in range(4):
            if not await self.answer_started(timeout=quiet):
                return
            await self.hear_answer()

    async def line(self, kind: str, reference: str, audio: tuple[np.ndarray, int], **extra: Any) -> Said:
        """Say a line after a quiet gap, hear the start of the answer, cut it."""
        await self.settle()
        said = await self.say(kind, reference, audio, **extra)
        said.answered = await self.answer_started()
        if said.answered:
            await self.hear_answer()
        if kind == "pause":  # a split line may get a second answer
            await self.settle(LATE_ANSWER_SECONDS)
        return said

    async def barge_in_trial(
        self, reference: str, audio: tuple[np.ndarray, int], kind: str, barge: tuple[str, tuple[np.ndarray, int]]
    ) -> Said:
        """Say a line; 1 s into its answer, say `barge` over it (a backchannel or an
        interruption); wait to see what the agent does; then end whatever is left."""
        await self.settle()
        asked = await self.say("wer", reference, audio)
        asked.answered = await self.answer_to(asked)
        if not asked.answered:
            return asked
        await asyncio.sleep(BARGE_AFTER_SECONDS)
        said = await self.say(kind, barge[0], barge[1], trigger=len(self.said) - 1)
        if kind == "backchannel":
            await asyncio.sleep(max(0.0, said.start + BACKCHANNEL_WINDOW_SECONDS - time.monotonic()))
            if self.call.agent_speaking:
                said.cut_at = time.monotonic()
                await self.cut()
        else:
            deadline = time.monotonic() + INTERRUPT_WAIT_SECONDS
            while self.call.agent_speaking and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.call.agent_speaking:  # missed: end the answer
                said.cut_at = time.monotonic()
                await self.cut()
            # The agent answers what the caller said (within the answer timeout of its end).
            if await self.answer_started(timeout=max(0.5, said.end + 4.0 - time.monotonic())):
                await self.hear_answer()
        await self.settle(LATE_ANSWER_SECONDS)  # anything else it still says
        return asked

    def finish(self) -> list[Said]:
        """Fill in what the meter measured (it holds one utterance per Said, in order)."""
        for said, measured, utterance in zip(self.said, self.meter.measurements(), self.meter.utterances, strict=True):
            said.heard_gap_ms = measured["heard_gap_ms"]
            said.barge_in_ms = measured["barge_in_ms"]
            said.barged_in = utterance.barged_in
            said.voiced_at = utterance.started_at
        return self.said

    @property
    def stretches(self) -> list[tuple[float, float]]:
        return [(s.start, s.end) for s in self.meter.stretches]


async def run_call(slug: str, script: Any, full_answers: bool) -> tuple[list[Said], list[dict[str, Any]], Any]:
    """One call of agent `slug` through the platform's entrypoint over the local transport;
    `script(caller)` speaks. Returns (utterances, stored turns, the caller, runtime info)."""
    from asgiref.sync import sync_to_async

    from agents_app.runtime.worker.entrypoint import entrypoint
    from agents_app.runtime.worker.local import LocalCall, run_local_job
    from agents_app.runtime.worker.local_server import INPUT_NOISE_LSB

    session_id = await sync_to_async(new_session)(slug)
    # As the local agent host makes it: a few LSB of noise under the caller's audio (a line
    # is never exact-zero silence; PocketSphinx and Moonshine both misbehave on that).
    call = LocalCall(input_noise_lsb=INPUT_NOISE_LSB)
    caller = Caller(call, full_answers=full_answers)
    job = asyncio.create_task(run_local_job(session_id=session_id, call=call, entrypoint=entrypoint))
    listening = asyncio.create_task(caller.listen())
    runtime: dict[str, Any] = {}
    try:
        await call.wait_agent_speaking(True, timeout=60)  # the greeting
        runtime = describe_runtime(call.job)
        await call.wait_agent_speaking(False, timeout=60)
        await script(caller)
        await asyncio.sleep(0.5)
    finally:
        call.hangup()
        await asyncio.wait_for(job, 60)
        await listening
    turns, events = await sync_to_async(stored_turns)(session_id)
    runtime["backchannel_events"] = sum("backchannel" in e for e in events)
    return caller.finish(), turns, (caller, runtime)


@dataclass
class Script:
    """The lines of one round, synthesized once (untimed). Each WER line of the Piper call
    may carry a barge-in trial: (kind, what the caller means, its audio)."""

    wer: list[tuple[str, tuple[np.ndarray, int], tuple[str, str, tuple[np.ndarray, int]] | None]]
    telephone: list[tuple[str, tuple[np.ndarray, int]]]
    pause: list[tuple[str, tuple[np.ndarray, int], float]]


def trial_plan(lines: int, backchannels: int, interruptions: int) -> list[tuple[str, int] | None]:
    """Which line carries which barge-in ((kind, its number) or None): the last lines, the
    two kinds alternating (a backchannel first), the first lines left plain."""
    kinds = [("backchannel", n) for n in range(backchannels)]
    stops = [("interrupt", n) for n in range(interruptions)]
    mixed: list[tuple[str, int]] = [t for pair in zip(kinds, stops, strict=False) for t in pair]
    mixed += kinds[len(stops) :] + stops[len(kinds) :]
    mixed = mixed[:lines]
    return [None] * (lines - len(mixed)) + list(mixed)


def build_script(quick: bool) -> Script:
    from agents_app.runtime.providers import piper

    cache: dict[str, tuple[np.ndarray, int]] = {}

    def voice(text: str) -> tuple[np.ndarray, int]:
        if text not in cache:
            cache[text] = piper.synthesize(text)
        return cache[text]

    lines = WER_LINES[:3] if quick else WER_LINES
    pauses = PAUSE_LINES[:1] if quick else PAUSE_LINES
    backchannels = BACKCHANNELS[:1] if quick else BACKCHANNELS
    interruptions = INTERRUPTIONS[:1] if quick else INTERRUPTIONS
    pause = []
    for first, second in pauses:
        # One sentence with the pause stretched inside it, so the first half keeps the
        # sentence's intonation (synthesized alone, it would end as a finished sentence).
        audio, rate_a, half = piper.synthesize_with_pause(f"{first} ... {second}", PAUSE_SECONDS)
        pause.append((f"{first} {second}", (audio, rate_a), half))
    wer_lines: list[Any] = []
    for text, planned in zip(lines, trial_plan(len(lines), len(backchannels), len(interruptions)), strict=True):
        trial = None
        if planned is not None and planned[0] == "backchannel":
            meant, spelled = backchannels[planned[1]]
            trial = ("backchannel", meant, voice(spelled))
        elif planned is not None:
            trial = ("interrupt", interruptions[planned[1]], voice(interruptions[planned[1]]))
        wer_lines.append((text, voice(text), trial))
    return Script(
        wer=wer_lines,
        telephone=[(text, telephone_band(*voice(text))) for text in lines],
        pause=pause,
    )


async def run_side(
    side: str, script: Script, tally: Tally, full_answers: bool, info: dict[str, Any], dump: list[Any] | None
) -> None:
    slug = SIDES[side]["slug"]

    async def piper_call(caller: Caller) -> None:
        for n, (text, audio, trial) in enumerate(script.wer):
            if trial is None:
                log(f"{side}: line {n + 1}/{len(script.wer)}")
                await caller.line("wer", text, audio)
            else:
                kind, meant, barge = trial
                log(f"{side}: line {n + 1}/{len(script.wer)}, then {kind} {meant!r} over its answer")
                await caller.barge_in_trial(text, audio, kind, (meant, barge))
        for n, (text, audio, half) in enumerate(script.pause):
            log(f"{side}: pause line {n + 1}/{len(script.pause)}")
            await caller.line("pause", text, audio, half_end=half)

    async def telephone_call(caller: Caller) -> None:
        for n, (text, audio) in enumerate(script.telephone):
            log(f"{side}: telephone line {n + 1}/{len(script.telephone)}")
            await caller.line("wer", text, audio)

    for band, call_script in (("piper", piper_call), ("telephone", telephone_call)):
        said, turns, (caller, runtime) = await run_call(slug, call_script, full_answers)
        tally.add_call(band, said, turns, caller.stretches)
        if dump is not None:
            dump.append(
                {
                    "side": side,
                    "band": band,
                    "said": [asdict(x) for x in said],
                    "turns": turns,
                    "heard": caller.stretches,
                }
            )
        tally.backchannel_events += runtime.pop("backchannel_events", 0)
        info.setdefault("runtime", runtime)


async def main(rounds: int, quick: bool, full_answers: bool, dump: list[Any] | None = None) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from django.core.management import call_command

    from agents_app.runtime.worker.entrypoint import prewarm as setup
    from agents_app.runtime.worker.local import prewarm

    started, load_before = time.monotonic(), os.getloadavg()[0]
    await sync_to_async(call_command)("migrate", verbosity=0)
    log("prewarming the offline models")
    await asyncio.to_thread(prewarm, setup)
    script = await asyncio.to_thread(build_script, quick)
    agents = {side: await sync_to_async(setup_agent)(side) for side in SIDES}
    tallies = {side: Tally() for side in SIDES}
    infos: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
    for n in range(rounds):
        order = ("previous", "current") if n % 2 == 0 else ("current", "previous")  # alternate who goes first
        for side in order:
            log(f"round {n + 1}/{rounds}: {side}")
            await run_side(side, script, tallies[side], full_answers, infos[side], dump)
    sides = {}
    for side in SIDES:
        agent = agents[side]
        sides[side] = {
            "agent": agent.slug,
            "stt_model": agent.stt_model or "(default)",
            "turn_detection": agent.turn_detection,
            "turn_eagerness": agent.turn_eagerness,
            "ignore_backchannels": agent.ignore_backchannels,
            "barge_in_min_speech_ms": agent.barge_in_min_speech_ms,
            "runtime": infos[side].get("runtime", {}),
            **tallies[side].summary(),
        }
    return {
        "name": "conversation_quality",
        "transport": "local",
        "rounds": rounds,
        "quick": quick,
        "answers": "played out" if full_answers else f"cut by the caller after {HEAR_SECONDS} s (client interrupt)",
        "caller": {
            "voice": "piper en_US-joe-medium, noise 0",
            "backchannel_spellings": {meant: spelled for meant, spelled in BACKCHANNELS},
            "pause_ms": PAUSE_SECONDS * 1000,
            "barge_in_after_ms": BARGE_AFTER_SECONDS * 1000,
        },
        "telephone": {
            "band_hz": list(TELEPHONE_BAND_HZ),
            "sent_at_hz": TELEPHONE_RATE,
            "codec": "none (linear PCM)",
            "transport_input": "accepts 8 kHz frames, resamples them to its 16 kHz (LocalCall.push_caller_frame)",
        },
        "percentiles": "nearest rank",
        "previous": sides["previous"],
        "current": sides["current"],
        "seconds": round(time.monotonic() - started, 1),
        # Other jobs on the machine slow both sides alike, but the absolute figures with them.
        "load_average_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":  # the PocketSphinx pool spawns processes: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (~2 min): 3 lines a band, 1 pause line, 2 trials"
    )
    parser.add_argument("--full-answers", action="store_true", help="let every answer play out (~1.7x as long)")
    parser.add_argument("--dump", metavar="PATH", help="also write every call's utterances, turns and heard audio here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import django

    django.setup()
    calls: list[Any] | None = [] if args.dump else None
    result = asyncio.run(main(args.rounds, args.quick, args.full_answers, calls))
    if args.dump:
        Path(args.dump).write_text(json.dumps(calls, indent=1))
    print(json.dumps(result))
