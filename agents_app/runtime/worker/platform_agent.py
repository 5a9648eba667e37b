"""The livekit `Agent` the platform runs, and the AgentSession options it runs with.

`PlatformAgent` is configured from the DB (instructions, the context rebuilt from stored
turns, the ledger-backed tools); its node overrides only observe (generated text, first
audio) for the turn record. `session_options` is shared with the bare benchmark peer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.conf import settings
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, stt
from livekit.agents.voice import ModelSettings, room_io

from agents_app.runtime.worker import turn_taking
from agents_app.runtime.worker.config import JobConfig, StoredToolCall
from agents_app.runtime.worker.turns import TurnTracker

if TYPE_CHECKING:
    from agents_app.models import Agent as AgentModel

# Our hooks' cost is measured as CPU time of the loop's thread: on a shared machine,
# wall-clock deltas would also count time the OS gave to other processes.
cpu_time = time.thread_time


def session_options(*, agent: AgentModel | None = None, allow_interruptions: bool = True) -> dict[str, Any]:
    """AgentSession options shared by the platform and the bare benchmark peer: the agent's
    turn-taking settings (agents_app/runtime/worker/turn_taking.py)."""
    return {
        "turn_handling": turn_taking.turn_handling(agent, allow_interruptions=allow_interruptions),
        # Otherwise barge-in is ignored for the first 3 s of agent speech.
        "aec_warmup_duration": None,
        "user_away_timeout": None,
    }


INTERRUPTED_TOOL_CALL = (
    "INTERRUPTED: the agent process running this call stopped before it answered, and it is "
    "not known whether the call took effect. Do not make it again unless the caller asks you "
    "to; if it comes up, tell the caller it may already have gone through."
)


def restored_chat_context(config: JobConfig) -> llm.ChatContext:
    """The conversation so far, from stored turns (heard text for interrupted ones), with
    the session's tool calls from the ledger where they happened: each inside the turn it
    was made in (before that turn's reply), a call of the turn the dead job never stored at
    the end. A call left running (or indeterminate) is shown as interrupted, so the model
    does not make it again as if new."""
    chat_ctx = llm.ChatContext.empty()
    calls = list(config.tool_calls)
    for turn in config.turns:
        if turn.user_text:
            chat_ctx.add_message(role="user", content=turn.user_text)
        while calls and turn.at is not None and calls[0].at <= turn.at:
            _add_tool_call(chat_ctx, calls.pop(0))
        if turn.agent_text:
            chat_ctx.add_message(role="assistant", content=turn.agent_text)
    for call in calls:
        _add_tool_call(chat_ctx, call)
    return chat_ctx


def _add_tool_call(chat_ctx: llm.ChatContext, call: StoredToolCall) -> None:
    from tools_app.models import InvocationStatus

    call_id = f"call_restored_{len(chat_ctx.items)}"
    succeeded = call.status == InvocationStatus.SUCCEEDED
    if succeeded:
        output = json.dumps(call.result, default=str)[:2000]
    elif call.status == InvocationStatus.FAILED:
        output = f"error: {call.error}"[:2000]
    else:  # running (its owner died) or indeterminate
        output = INTERRUPTED_TOOL_CALL
    arguments = json.dumps(call.arguments, default=str)
    chat_ctx.items.append(llm.FunctionCall(call_id=call_id, name=call.name, arguments=arguments))
    chat_ctx.items.append(
        llm.FunctionCallOutput(call_id=call_id, name=call.name, output=output, is_error=not succeeded)
    )


async def typed_text_input(session: AgentSession, event: room_io.TextInputEvent) -> None:
    """A caller's typed message (agents with text input on): trimmed, cut to
    TEXT_INPUT_MAX_CHARS, then handled as livekit-agents does by default (interrupt the
    agent, answer it as the caller's turn). Blank messages are dropped."""
    text = (event.text or "").strip()[: int(settings.TEXT_INPUT_MAX_CHARS)]
    if not text:
        return
    handled = room_io.TextInputOptions().text_input_cb(session, replace(event, text=text))
    if asyncio.iscoroutine(handled):
        await handled


def room_options(config: JobConfig) -> room_io.RoomOptions:
    """How the session uses the room (LiveKit mode).

    - Linked to this session's caller only: a supervisor or a second device in the
      room is never the one the agent listens to.
    - The session outlives a clean leave of the caller (`close_on_disconnect=False`):
      a caller who rejoins (the call page's reconnect, a new device) within the room's
      departure_timeout finds the same job, which links to them again and carries on.
      When nobody comes back, the server closes the room and that ends the job.
    - Typed input on `lk.chat` only for agents that allow it (`Agent.text_input`, off
      by default): from the linked caller only (room_io filters on the identity), cut
      to TEXT_INPUT_MAX_CHARS, answered like speech and stored as the caller's turn
      (the turn tracker opens turns on the user's conversation items).
    - The caller's audio in frames of ROOM_AUDIO_INPUT_FRAME_MS (20 ms; livekit-agents'
      default is 50): a frame is handed on only when complete, so the VAD sees the
      caller's silence end up to a frame late, and the answer starts that much later
      (docs/latency.md, "LiveKit").
    """
    return room_io.RoomOptions(
        participant_identity=config.caller_identity,
        close_on_disconnect=False,
        audio_input=room_io.AudioInputOptions(frame_size_ms=int(settings.ROOM_AUDIO_INPUT_FRAME_MS)),
        text_input=room_io.TextInputOptions(text_input_cb=typed_text_input) if config.agent.text_input else False,
    )


class PlatformAgent(Agent):
    """The DB-configured agent. Its node overrides only observe (text, first audio)."""

    def __init__(
        self,
        *,
        config: JobConfig,
        tracker: TurnTracker,
        tools: list[Any],
        on_backchannel: Callable[[str], None] | None = None,
        on_transcript: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(instructions=config.instructions, chat_ctx=restored_chat_context(config), tools=tools)
        self._tracker = tracker
        # Backchannels are dropped only when there is somebody to record them.
        self._on_backchannel = on_backchannel if config.agent.ignore_backchannels else None
        # The turn detector reads the words too (providers/smart_turn.py).
        self._on_transcript = on_transcript

    def _agent_is_speaking(self) -> bool:
        """A reply is under way: playing, or paused by the caller's voice (not yet cut)."""
        speech = self.session.current_speech
        return speech is not None and not speech.interrupted and not speech.done()

    async def stt_node(
        self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
    ) -> AsyncIterable[stt.SpeechEvent | str]:
        """The default STT node, with backchannels over agent speech taken out: their final
        transcript goes on empty, so livekit neither interrupts on it nor commits a turn."""
        async for event in Agent.default.stt_node(self, audio, model_settings):
            if (
                isinstance(event, stt.SpeechEvent)
                and event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
                and event.alternatives
            ):
                t0 = cpu_time()
                text = event.alternatives[0].text
                if self._on_backchannel is not None and turn_taking.is_backchannel(text) and self._agent_is_speaking():
                    self._on_backchannel(text)
                    event = replace(
                        event, alternatives=[replace(event.alternatives[0], text=""), *event.alternatives[1:]]
                    )
                if self._on_transcript is not None:
                    self._on_transcript(event.alternatives[0].text)
                self._tracker.charge(cpu_time() - t0)
            yield event

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[llm.ChatChunk | str]:
        t0 = cpu_time()
        tracker = self._tracker
        generation = tracker.generation_for(chat_ctx)
        text = generation.text
        spent = cpu_time() - t0
        async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
            t1 = cpu_time()
            if isinstance(chunk, str):
                text.append(chunk)
            elif isinstance(chunk, llm.ChatChunk) and chunk.delta is not None:
                if chunk.delta.content:
                    text.append(chunk.delta.content)
                if chunk.delta.tool_calls:
                    generation.tool_pending = True
            spent += cpu_time() - t1
            yield chunk
        tracker.charge(spent)

    async def tts_node(self, text: AsyncIterable[str], model_settings: ModelSettings) -> AsyncIterable[rtc.AudioFrame]:
        first = True
        async for frame in Agent.default.tts_node(self, text, model_settings):
            if first:
                t0 = cpu_time()
                first = False
                self._tracker.first_audio(time.time())
                self._tracker.charge(cpu_time() - t0)
            yield frame
