"""Assembling turn records from what livekit-agents reports, on the agent's event loop.

Everything here runs on the hot path, so it only does arithmetic on data the framework
already produced and hands finished records to the Recorder (non-blocking). The time
our own hooks hold the loop is measured per turn (`hook_ms`, used by the benchmark).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit.agents.llm import ChatContext, ChatMessage, FunctionCallOutput

from agents_app.runtime.worker.recorder import Recorder


@dataclass
class PendingTurn:
    index: int
    user_text: str = ""
    generated: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stopped_speaking_at: float | None = None
    first_audio_at: float | None = None
    started_at: float = field(default_factory=time.time)
    interrupted: bool = False
    interrupt_source: str = ""
    error: str = ""
    hook_s: float = 0.0


@dataclass
class Generation:
    text: list[str] = field(default_factory=list)
    tool_pending: bool = False


def _last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if isinstance(item, ChatMessage) and item.role == "user":
            return (item.text_content or "").strip()
    return ""


def _ms(seconds: Any) -> float | None:
    if seconds is None:
        return None
    try:
        return round(float(seconds) * 1000.0, 3)
    except (TypeError, ValueError):
        return None


class TurnTracker:
    """Builds one record per turn: caller utterance (or greeting) → agent reply."""

    def __init__(
        self,
        *,
        recorder: Recorder,
        next_index: int,
        on_turn: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._recorder = recorder
        self._next_index = next_index
        self._current: PendingTurn | None = None
        self._client_interrupt_pending = False
        self._on_turn = on_turn
        self._generations: dict[str, Generation] = {}
        self.hook_ms: list[float] = []  # per finished turn: time our hooks held the loop

    # -- measuring our own cost --------------------------------------------------------
    def charge(self, seconds: float) -> None:
        turn = self._current
        if turn is not None:
            turn.hook_s += seconds
        else:
            self._unattributed = getattr(self, "_unattributed", 0.0) + seconds

    @property
    def current(self) -> PendingTurn | None:
        return self._current

    def _open(self, user_text: str = "") -> PendingTurn:
        turn = PendingTurn(index=self._next_index, user_text=user_text)
        turn.hook_s += getattr(self, "_unattributed", 0.0)
        self._unattributed = 0.0
        self._next_index += 1
        self._current = turn
        return turn

    # -- inputs ----------------------------------------------------------------------
    def agent_turn_started(self, *, generated: str) -> None:
        """Agent speech with no caller utterance before it (the greeting)."""
        if self._current is not None:
            self._finish(self._current)
        self._open().generated.append(generated)

    def user_message(self, message: ChatMessage) -> None:
        if self._current is not None:
            # the previous reply never produced an assistant message (cut before any audio)
            previous = self._current
            if not previous.heard:
                previous.interrupted = True
                previous.interrupt_source = previous.interrupt_source or self._take_interrupt_source()
            self._finish(previous)
        turn = self._open(user_text=(message.text_content or "").strip())
        metrics = message.metrics or {}
        for key, stage in (("end_of_turn_delay", "eou"), ("transcription_delay", "stt")):
            value = _ms(metrics.get(key))
            if value is not None:
                turn.stages[stage] = value
        turn.stopped_speaking_at = metrics.get("stopped_speaking_at")

    def generation_for(self, chat_ctx: ChatContext) -> Generation:
        """The text buffer of an LLM call, keyed by the caller words it answers.

        Keyed rather than tied to the current turn because preemptive generation starts
        the LLM before the user turn is committed, and a tool continuation adds to the
        reply it continues. A fresh (non-continuation) call replaces a discarded attempt.
        """
        items = chat_ctx.items
        key = _last_user_text(items)
        continuation = bool(items) and isinstance(items[-1], FunctionCallOutput)
        generation = self._generations.get(key)
        if generation is None or not continuation:
            generation = self._generations[key] = Generation()
            while len(self._generations) > 8:  # only recent replies can still be recorded
                self._generations.pop(next(iter(self._generations)))
        else:
            generation.tool_pending = False
        return generation

    def first_audio(self, at: float) -> None:
        turn = self._current
        if turn is not None and turn.first_audio_at is None:
            turn.first_audio_at = at

    def tool_result(self, record: dict[str, Any]) -> None:
        turn = self._current
        if turn is not None:
            turn.tool_calls.append(dict(record))

    def client_interrupt(self) -> None:
        self._client_interrupt_pending = True

    def _take_interrupt_source(self) -> str:
        source = "client" if self._client_interrupt_pending else "vad"
        self._client_interrupt_pending = False
        return source

    def assistant_message(self, message: ChatMessage) -> dict[str, Any] | None:
        """Returns the finished turn record, or None if the reply continues (tool call)."""
        turn = self._current or self._open()
        text = (message.text_content or "").strip()
        if text:
            turn.heard.append(text)
        metrics = message.metrics or {}
        for key, stage in (("llm_node_ttft", "llm_ttft"), ("tts_node_ttfb", "tts_ttfb"), ("e2e_latency", "e2e")):
            value = _ms(metrics.get(key))
            if value is not None and stage not in turn.stages:
                turn.stages[stage] = value
        if message.interrupted:
            turn.interrupted = True
            turn.interrupt_source = self._take_interrupt_source()
        elif (gen := self._generations.get(turn.user_text)) is not None and gen.tool_pending:
            return None  # words before a tool call; the answer comes after it
        return self._finish(turn)

    def error(self, message: str) -> None:
        if self._current is not None:
            self._current.error = message[:2000]

    def close(self) -> dict[str, Any] | None:
        """Flush a turn still open when the job ends."""
        if self._current is None:
            return None
        turn = self._current
        if not turn.heard and (turn.generated or turn.user_text):
            turn.interrupted = bool(turn.generated)
            if turn.interrupted:
                turn.interrupt_source = self._take_interrupt_source()
        return self._finish(turn)

    # -- output ----------------------------------------------------------------------
    def _finish(self, turn: PendingTurn) -> dict[str, Any]:
        self._current = None
        self._client_interrupt_pending = False
        heard = " ".join(turn.heard).strip()
        generation = self._generations.pop(turn.user_text, None) if turn.user_text else None
        generated_parts = generation.text if generation is not None and generation.text else turn.generated
        generated = "".join(generated_parts).strip() or heard
        if turn.stopped_speaking_at and turn.first_audio_at:
            turn.stages["ttfa"] = round((turn.first_audio_at - turn.stopped_speaking_at) * 1000.0, 3)
        if turn.tool_calls:
            turn.stages["tool"] = round(sum(float(c.get("latency_ms") or 0) for c in turn.tool_calls), 3)
        data: dict[str, Any] = {
            "index": turn.index,
            "user_text": turn.user_text,
            "generated_text": generated,
            "heard_text": heard if turn.interrupted else (heard or generated),
            "interrupted": turn.interrupted,
            "interrupt_source": turn.interrupt_source if turn.interrupted else "",
            "tool_calls": turn.tool_calls,
            "error": turn.error,
            "started_at": turn.started_at,
            **{f"{stage}_ms": value for stage, value in turn.stages.items()},
        }
        hook_ms = round(turn.hook_s * 1000.0, 4)
        data["hook_ms"] = hook_ms  # not stored; the benchmark reads it
        self.hook_ms.append(hook_ms)
        self._recorder.record_turn(data)
        if self._on_turn is not None:
            self._on_turn(data)
        return data
