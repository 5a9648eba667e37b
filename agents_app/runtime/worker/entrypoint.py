"""The one job entrypoint, for LiveKit jobs and local (in-process) jobs alike.

Per job: read the session id from the job metadata, load the pinned prompt, tools,
providers and budgets from the DB (async ORM), rebuild the chat context from stored
turns (reconnect / agent restart), start an AgentSession, greet only on a fresh call,
and report every turn through the batching Recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterable
from dataclasses import replace
from typing import Any

from django.conf import settings
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, JobProcess, llm, stt, tts
from livekit.agents.voice import ModelSettings, room_io
from livekit.agents.voice.transcription import TranscriptSynchronizer

# livekit plugins must be registered on the main thread: import them with this module.
from livekit.plugins import openai as _openai_plugin  # noqa: F401
from livekit.plugins import silero  # noqa: F401

from agents_app.runtime.providers.factory import build_providers, load_vad, prewarm_offline
from agents_app.runtime.providers.fallback import ChainMonitor, session_conn_options
from agents_app.runtime.worker import local
from agents_app.runtime.worker.config import JobConfig, load_job_config
from agents_app.runtime.worker.recorder import Recorder
from agents_app.runtime.worker.turns import TurnTracker
from sessions_app import metrics
from sessions_app.livekit_server import PROBE_METADATA_KEY
from voiceplatform.logging import bind_log_context

logger = logging.getLogger(__name__)

# Our hooks' cost is measured as CPU time of the loop's thread: on a shared machine,
# wall-clock deltas would also count time the OS gave to other processes.
_cpu = time.thread_time


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process before its job: log once, load the VAD (and offline models)."""
    from agents_app.runtime.worker.livekit_worker import adopt_job_process_logging

    adopt_job_process_logging()
    proc.userdata["vad"] = load_vad()
    if getattr(settings, "DEFAULT_PROVIDER", "offline") == "offline":
        try:
            prewarm_offline()
        except Exception:  # a job still works, only its first turn is slower
            logger.warning("could not prewarm the offline providers", exc_info=True)


def session_options(*, allow_interruptions: bool = True) -> dict[str, Any]:
    """AgentSession options shared by the platform and the bare benchmark peer."""
    return {
        "turn_handling": {
            # The model turn detector varies widely run to run; VAD is predictable.
            "turn_detection": "vad",
            "interruption": {"enabled": allow_interruptions, "mode": "vad"},
        },
        # Otherwise barge-in is ignored for the first 3 s of agent speech.
        "aec_warmup_duration": None,
        "user_away_timeout": None,
    }


def restored_chat_context(config: JobConfig) -> llm.ChatContext:
    """The conversation so far, from stored turns (heard text for interrupted ones)."""
    chat_ctx = llm.ChatContext.empty()
    for turn in config.turns:
        if turn.user_text:
            chat_ctx.add_message(role="user", content=turn.user_text)
        if turn.agent_text:
            chat_ctx.add_message(role="assistant", content=turn.agent_text)
    return chat_ctx


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


class PlatformAgent(Agent):
    """The DB-configured agent. Its node overrides only observe (text, first audio)."""

    def __init__(self, *, config: JobConfig, tracker: TurnTracker, tools: list[Any]) -> None:
        super().__init__(instructions=config.instructions, chat_ctx=restored_chat_context(config), tools=tools)
        self._tracker = tracker

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[llm.ChatChunk | str]:
        t0 = _cpu()
        tracker = self._tracker
        generation = tracker.generation_for(chat_ctx)
        text = generation.text
        spent = _cpu() - t0
        async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
            t1 = _cpu()
            if isinstance(chunk, str):
                text.append(chunk)
            elif isinstance(chunk, llm.ChatChunk) and chunk.delta is not None:
                if chunk.delta.content:
                    text.append(chunk.delta.content)
                if chunk.delta.tool_calls:
                    generation.tool_pending = True
            spent += _cpu() - t1
            yield chunk
        tracker.charge(spent)

    async def tts_node(self, text: AsyncIterable[str], model_settings: ModelSettings) -> AsyncIterable[rtc.AudioFrame]:
        first = True
        async for frame in Agent.default.tts_node(self, text, model_settings):
            if first:
                t0 = _cpu()
                first = False
                self._tracker.first_audio(time.time())
                self._tracker.charge(_cpu() - t0)
            yield frame


class JobRuntime:
    """One job: session, recorder, control listener. Same code for both transports."""

    def __init__(self, *, ctx: JobContext, config: JobConfig, call: local.LocalCall | None) -> None:
        self.ctx = ctx
        self.config = config
        self.call = call
        self.recorder = Recorder(session_id=config.session_id, maxsize=settings.RECORDER_QUEUE_SIZE)
        self.tracker = TurnTracker(recorder=self.recorder, next_index=config.next_turn_index)
        # The writer task's own time on the loop counts as platform overhead too.
        self.recorder.on_loop_time = self.tracker.charge
        self.session: AgentSession | None = None
        self.providers: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._synchronizer: TranscriptSynchronizer | None = None
        self._ended = asyncio.Event()
        self.end_reason = ""
        self.ended_by_platform = False
        self._counted = False
        self._tools_report_results = False
        self.resilience: Any = None  # fallback.ChainMonitor: provider errors and failovers
        self._apology_at = 0.0

    # -- hooks on the loop: time them ------------------------------------------------
    def _timed(self, fn: Any) -> Any:
        tracker = self.tracker

        def wrapper(*args: Any) -> Any:
            t0 = _cpu()
            try:
                return fn(*args)
            finally:
                tracker.charge(_cpu() - t0)

        return wrapper

    def _on_item(self, ev: Any) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage):
            return
        if item.role == "user":
            self.tracker.user_message(item)
        elif item.role == "assistant":
            data = self.tracker.assistant_message(item)
            if data is not None and data["interrupted"]:
                self.recorder.record_event(
                    "agent.speech_interrupted",
                    {"turn": data["index"], "source": data["interrupt_source"], "heard_text": data["heard_text"][:500]},
                )

    def _on_tool_result(self, record: dict[str, Any]) -> None:
        t0 = _cpu()
        self.tracker.tool_result(record)
        self.recorder.record_event(
            "tool.called",
            {
                "name": record.get("name"),
                "status": record.get("status"),
                "replayed": bool(record.get("replayed")),
                "latency_ms": record.get("latency_ms"),
            },
        )
        self.tracker.charge(_cpu() - t0)

    def _on_tools_executed(self, ev: Any) -> None:
        # Without tools_app's ledger-backed tools there is no on_result: record from here.
        if self._tools_report_results:
            return
        for call, output in ev.zipped():
            self._on_tool_result(
                {
                    "name": call.name,
                    "call_id": call.call_id,
                    "key": f"{self.config.session_id}:{call.call_id}",
                    "status": "failed" if (output is not None and output.is_error) else "succeeded",
                    "replayed": False,
                    "latency_ms": None,
                    "error": (output.output if output is not None and output.is_error else ""),
                }
            )

    def _on_error(self, ev: Any) -> None:
        message = f"{type(ev.error).__name__}: {ev.error}"
        self.tracker.error(message)
        source = ev.source
        stage = (
            "llm"
            if isinstance(source, llm.LLM)
            else "stt"
            if isinstance(source, stt.STT)
            else "tts"
            if isinstance(source, tts.TTS)
            else "other"
        )
        # The chain monitor records provider events, counts the metric per provider and
        # plays the apology when a whole stage failed (issue 11).
        handled = self.resilience is not None and self.resilience.session_error(ev)
        with contextlib.suppress(Exception):
            if not handled:
                metrics.PROVIDER_FAILURES.labels(stage=stage, provider=getattr(source, "provider", "unknown")).inc()
        self.recorder.record_event(
            "agent.error",
            {"source": getattr(ev.source, "label", type(ev.source).__name__), "error": message[:500]},
        )

    def _on_stage_failed(self, stage: str, message: str) -> None:
        """Every provider of a stage failed: apologise aloud and keep the session up."""
        now = time.monotonic()
        if self.session is None or now - self._apology_at < 3.0:
            return  # one apology for a burst of failures
        self._apology_at = now
        from agents_app.runtime.providers import apology

        try:
            apology.play(self.session)
        except Exception:
            logger.warning("could not play the apology", exc_info=True)
            return
        self.recorder.record_event("agent.apology", {"stage": stage, "error": message[:300]})

    def _on_close(self, ev: Any) -> None:
        self.end_reason = self.end_reason or f"session closed ({getattr(ev, 'reason', '')})"
        self._ended.set()

    # -- control: client interrupts and ends ------------------------------------------
    def interrupt(self, source: str = "client") -> None:
        if self.session is None:
            return
        self.tracker.client_interrupt()
        with contextlib.suppress(Exception):
            self.session.interrupt()

    async def _listen_control(self) -> None:
        from channels.layers import get_channel_layer

        from sessions_app import broadcast

        layer = get_channel_layer()
        if layer is None:
            return
        group = broadcast.agent_control_group(self.config.session_id)
        channel = ""
        try:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
            while True:
                try:
                    message = await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis hiccups must not deafen the job
                    logger.debug("control receive failed (%s); retrying", exc)
                    await asyncio.sleep(0.2)
                    continue
                kind = message.get("type")
                if kind == "agent.interrupt":
                    self.interrupt("client")
                elif kind == "agent.end":
                    self.end_reason = str(message.get("reason") or "ended by the platform")
                    self.ended_by_platform = True
                    self._ended.set()
                    if self.call is None:
                        self.ctx.shutdown(self.end_reason)
                elif kind == "agent.crash" and self.call is None:
                    self._crash()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("agent control listener stopped for %s", self.config.session_id, exc_info=True)
        finally:
            if channel:
                with contextlib.suppress(Exception):
                    await asyncio.shield(layer.group_discard(group, channel))

    def _crash(self) -> None:
        """Fault injection (AGENT_FAULT_INJECTION): die as an OOM-killed job process would.

        SIGKILL: no goodbye to the room, no flush, no shutdown callbacks. The platform
        must notice the agent left and dispatch a new job (sessions_app.lifecycle).
        """
        if not settings.AGENT_FAULT_INJECTION:
            logger.warning("ignored agent.crash for %s: AGENT_FAULT_INJECTION is off", self.config.session_id)
            return
        logger.warning("agent.crash for %s: killing this job process (pid %d)", self.config.session_id, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    async def _heartbeat(self) -> None:
        while True:
            self.recorder.heartbeat()
            await asyncio.sleep(settings.AGENT_HEARTBEAT_SECONDS)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> bool:
        """Start serving; False when this job must not serve the session (LiveKit mode:
        the session has ended, or another job already serves it)."""
        config = self.config
        if self.call is None:
            await self.ctx.connect()
            if not await _claim_session(config.session_id, self.ctx):
                return False
        self.recorder.start()
        metrics.SESSIONS_SERVED.labels(agent=config.agent.slug).inc()
        metrics.ACTIVE_SESSIONS.inc()
        self._counted = True
        vad = self.ctx.proc.userdata.get("vad") or load_vad()
        self.providers = build_providers(config.agent, vad=vad)
        tools = await self._build_tools()
        session = AgentSession(
            stt=self.providers.stt,
            llm=self.providers.llm,
            tts=self.providers.tts,
            vad=vad,
            conn_options=session_conn_options(config.agent),
            **session_options(allow_interruptions=config.agent.allow_interruptions),
        )
        self.session = session
        self.resilience = ChainMonitor(record_event=self.recorder.record_event, on_stage_failed=self._on_stage_failed)
        for stage_name in ("stt", "llm", "tts"):
            self.resilience.watch(stage_name, getattr(self.providers, stage_name))
        session.on("conversation_item_added", self._timed(self._on_item))
        session.on("function_tools_executed", self._timed(self._on_tools_executed))
        session.on("error", self._timed(self._on_error))
        session.on("close", self._on_close)
        agent = PlatformAgent(config=config, tracker=self.tracker, tools=tools)

        if self.call is not None:
            self._synchronizer = TranscriptSynchronizer(
                next_in_chain_audio=self.call.audio_output, next_in_chain_text=None
            )
            session.input.audio = self.call.audio_input
            session.output.audio = self._synchronizer.audio_output
            session.output.transcription = self._synchronizer.text_output
            self.call.audio_output.start()
            await session.start(agent=agent)
        else:
            await session.start(agent=agent, room=self.ctx.room, room_options=self.room_options(), record=False)
            self._register_rpc()

        self._tasks.append(asyncio.create_task(self._listen_control(), name="agent-control"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="agent-heartbeat"))
        self.recorder.record_event(
            "agent.job_started",
            {
                "job_id": self.ctx.job.id,
                "transport": "local" if self.call is not None else "livekit",
                "prompt_version": config.prompt_version,
                "providers": self.providers.describe(),
                "tools": [getattr(getattr(t, "info", None), "name", "") for t in tools],
                "resumed": config.resumed,
                "restored_turns": len(config.turns),
            },
        )
        if config.greeting and not config.resumed:
            # A reconnect or restarted agent continues the call instead of greeting again.
            self.tracker.agent_turn_started(generated=config.greeting)
            session.say(config.greeting)
        return True

    def room_options(self) -> room_io.RoomOptions:
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
        """
        return room_io.RoomOptions(
            participant_identity=self.config.caller_identity,
            close_on_disconnect=False,
            text_input=room_io.TextInputOptions(text_input_cb=typed_text_input)
            if self.config.agent.text_input
            else False,
        )

    async def _build_tools(self) -> list[Any]:
        self._tools_report_results = False
        try:
            from tools_app.agent_tools import build_agent_tools
        except ImportError:
            return []
        try:
            tools = await build_agent_tools(
                agent_id=self.config.agent.pk,
                session_id=self.config.session_id,
                on_result=self._timed(self._on_tool_result),
            )
        except Exception as exc:
            logger.exception("could not build the agent's tools")
            self.recorder.record_event("agent.error", {"source": "tools", "error": str(exc)[:500]})
            return []
        self._tools_report_results = True
        return list(tools)

    def _register_rpc(self) -> None:
        async def _interrupt(data: Any) -> str:
            self.interrupt("client")
            return json.dumps({"ok": True})

        try:
            self.ctx.room.local_participant.register_rpc_method("interrupt", _interrupt)
        except Exception:
            logger.warning("could not register the interrupt RPC method", exc_info=True)

    async def wait(self) -> None:
        """Local mode: run until the call hangs up, the session closes or the platform ends it."""
        assert self.call is not None
        closed = asyncio.ensure_future(self.call.wait_closed())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({closed, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            ended.cancel()
        if not self.end_reason:
            self.end_reason = self.call.hangup_reason or "caller hung up"

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            metrics.ACTIVE_SESSIONS.dec()

    async def aclose(self) -> None:
        """Graceful end: close the session, flush the open turn and all records."""
        self._uncount()
        for task in self._tasks:
            task.cancel()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.aclose()
        if self._synchronizer is not None:
            with contextlib.suppress(Exception):
                await self._synchronizer.aclose()
        if self.call is not None:
            await self.call.audio_output.aclose()
            self.call._close()
        self.tracker.close()
        await self.recorder.aclose()

    def abort(self) -> None:
        """Simulated crash: stop everything at once, write nothing more."""
        self._uncount()
        self.recorder.abort()
        for task in self._tasks:
            task.cancel()
        if self.session is not None:
            # Release the session's tasks (a real crash would take the process with it).
            asyncio.ensure_future(_quiet_close(self.session))
        if self.call is not None:
            asyncio.ensure_future(self.call.audio_output.aclose())


async def _quiet_close(session: AgentSession) -> None:
    with contextlib.suppress(Exception):
        await session.aclose()


async def _claim_session(session_id: str, ctx: JobContext) -> bool:
    """Report this job as the session's agent (the webhook reports the same join later).

    Done by the job too, so the platform knows its agent even when webhooks are slow or
    not configured (LiveKit Cloud without a webhook URL).
    """
    from asgiref.sync import sync_to_async

    from sessions_app.lifecycle import session_agent_joined

    identity = ctx.room.local_participant.identity
    serving = await sync_to_async(session_agent_joined, thread_sensitive=False)(
        session_id=session_id, identity=identity, job_id=ctx.job.id, source="job"
    )
    if not serving:
        logger.warning("session %s has ended or has another agent: job %s leaves", session_id, ctx.job.id)
        ctx.shutdown("the session has ended or another agent serves it")
    return serving


async def _end_session_if_live(session_id: str, reason: str) -> None:
    """The platform asked the job to end: make sure the session is final."""
    from asgiref.sync import sync_to_async

    from sessions_app.services import session_finish

    await sync_to_async(session_finish, thread_sensitive=False)(session_id=session_id, reason=reason)


# `manage.py doctor` dispatches a job with PROBE_METADATA_KEY into a room of its own to see
# that a worker serves LIVEKIT_AGENT_NAME (sessions_app/livekit_server.py). Such a job
# joins, touches no session and no database, and leaves when the doctor deletes the room.
PROBE_STAY_SECONDS = 30.0


async def _answer_probe(ctx: JobContext) -> None:
    from livekit.agents import AutoSubscribe

    logger.info("doctor probe %s: joining room %s", ctx.job.id, getattr(ctx.room, "name", ""))
    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    # Normally the doctor deletes the room within seconds; this bounds a doctor that died.
    asyncio.get_running_loop().call_later(PROBE_STAY_SECONDS, ctx.shutdown, "doctor probe answered")


async def entrypoint(ctx: JobContext) -> None:
    metadata = json.loads(ctx.job.metadata or "{}")
    if metadata.get(PROBE_METADATA_KEY) and local.current_call() is None:
        await _answer_probe(ctx)
        return
    session_id = str(metadata["session_id"])
    bind_log_context(session_id=session_id, room=getattr(ctx.room, "name", None) or None)
    config = await load_job_config(session_id)
    # Every log line of this job (and of the tasks it starts) carries these fields.
    bind_log_context(agent=config.agent.slug)
    call = local.current_call()
    if call is not None and call.impairment is None:
        # Network impairment a scenario asked for in the session metadata (issue 11).
        from agents_app.runtime.worker.impairment import impairment_from_session

        call.impairment = await impairment_from_session(session_id)
    runtime = JobRuntime(ctx=ctx, config=config, call=call)
    if call is not None:
        call.job = runtime  # lets the local host, tests and the benchmark look inside
    if call is None:
        # LiveKit: the framework keeps the job alive while the room is connected.
        async def _shutdown(reason: str = "") -> None:
            await runtime.aclose()
            if runtime.ended_by_platform:
                await _end_session_if_live(session_id, runtime.end_reason)
            # One job per process: let the process exit (livekit waits on its threads).
            from agents_app.runtime.providers import sphinx

            sphinx.shutdown_pool()

        ctx.add_shutdown_callback(_shutdown)
        await runtime.start()
        return

    try:
        await runtime.start()
        await runtime.wait()
    except asyncio.CancelledError:
        runtime.abort()
        raise
    if call.impairment is not None:
        runtime.recorder.record_event("network.impairment", call.impairment.summary())
    await runtime.aclose()
    if runtime.ended_by_platform:
        await _end_session_if_live(session_id, runtime.end_reason)
