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
import socket
import time
from typing import Any

from django.conf import settings
from livekit.agents import AgentSession, JobContext, JobProcess, llm, stt, tts
from livekit.agents.voice.transcription import TranscriptSynchronizer

# livekit plugins must be registered on the main thread: import them with this module.
from livekit.plugins import openai as _openai_plugin  # noqa: F401
from livekit.plugins import silero  # noqa: F401

from agents_app.runtime.providers import smart_turn
from agents_app.runtime.providers.factory import build_providers, load_vad, prewarm_offline
from agents_app.runtime.providers.fallback import ChainMonitor, session_conn_options
from agents_app.runtime.supervisor import supervisor_note
from agents_app.runtime.worker import control, job_session, local, turn_taking
from agents_app.runtime.worker.config import JobConfig, load_job_config
from agents_app.runtime.worker.keypad import Keypad, keypad_text
from agents_app.runtime.worker.phone_controls import PhoneCallControls
from agents_app.runtime.worker.platform_agent import PlatformAgent, cpu_time, room_options, session_options
from agents_app.runtime.worker.recorder import Recorder
from agents_app.runtime.worker.turns import TurnTracker
from sessions_app import metrics
from sessions_app.livekit_server import PHONE_LINE_METADATA_KEY, PROBE_METADATA_KEY
from sessions_app.models import mask_room_name
from tools_app import call_controls
from voiceplatform.logging import bind_log_context

logger = logging.getLogger(__name__)


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process before its job: log once, load the VADs, Smart Turn (and
    the offline models)."""
    from agents_app.runtime.worker.livekit_worker import adopt_job_process_logging

    adopt_job_process_logging()
    # Both VADs (silence-only and semantic end of turn) are loaded once per process.
    load_vad()
    load_vad(settings.SMART_TURN_VAD_SILENCE_SECONDS)
    try:
        smart_turn.warm()
    except Exception:  # a job still works: its first prediction loads the model
        logger.warning("could not load the Smart Turn model", exc_info=True)
    if getattr(settings, "DEFAULT_PROVIDER", "offline") == "offline":
        try:
            prewarm_offline()
        except Exception:  # a job still works, only its first turn is slower
            logger.warning("could not prewarm the offline providers", exc_info=True)


class JobRuntime:
    """One job: session, recorder, control listener. Same code for both transports."""

    def __init__(self, *, ctx: JobContext, config: JobConfig, call: local.LocalCall | None) -> None:
        self.ctx = ctx
        self.config = config
        self.call = call
        self.recorder = Recorder(
            session_id=config.session_id,
            maxsize=settings.RECORDER_QUEUE_SIZE,
            retry_seconds=settings.RECORDER_RETRY_SECONDS,
        )
        self.tracker = TurnTracker(recorder=self.recorder, next_index=config.next_turn_index)
        # The writer task's own time on the loop counts as platform overhead too.
        self.recorder.on_loop_time = self.tracker.charge
        self.recorder.on_session_final = self._on_session_final
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
        self.turn_detector: Any = None  # "vad" or the Smart Turn detector (its predictions)
        self.keypad: Keypad | None = None  # phone calls: the caller's key presses
        self.phone_controls: PhoneCallControls | None = None  # phone calls: DTMF out, transfer

    # -- hooks on the loop: time them ------------------------------------------------
    def _timed(self, fn: Any) -> Any:
        tracker = self.tracker

        def wrapper(*args: Any) -> Any:
            t0 = cpu_time()
            try:
                return fn(*args)
            finally:
                tracker.charge(cpu_time() - t0)

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

    def _on_backchannel(self, text: str) -> None:
        """The caller acknowledged the agent mid-reply: kept as an event, not a turn."""
        current = self.tracker.current
        self.recorder.record_event(
            "caller.backchannel", {"text": text[:100], "turn": current.index if current is not None else None}
        )

    def _on_tool_result(self, record: dict[str, Any]) -> None:
        t0 = cpu_time()
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
        self.tracker.charge(cpu_time() - t0)

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

    def _on_control(self, message: dict[str, Any]) -> None:
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
            control.crash_job(self.config.session_id)
        elif kind == "agent.whisper":
            self._tasks.append(asyncio.ensure_future(self.whisper(str(message.get("text") or ""))))

    async def whisper(self, text: str) -> None:
        """Support staff's guidance (sessions_app.services.session_whisper): a supervisor note
        in the agent's context for its next reply; never spoken, never shown to the caller."""
        if self.session is None or not text:
            return
        try:
            agent = self.session.current_agent
            chat_ctx = agent.chat_ctx.copy()
            chat_ctx.add_message(role="system", content=supervisor_note(text))
            await agent.update_chat_ctx(chat_ctx)
        except Exception as exc:
            logger.warning("could not give the agent a supervisor note", exc_info=True)
            self.recorder.record_event("agent.error", {"source": "whisper", "error": str(exc)[:300]})
            return
        self.recorder.record_event("agent.supervisor_note", {"chars": len(text)})

    def _on_dtmf(self, ev: Any) -> None:
        participant = getattr(ev, "participant", None)
        if self.keypad is not None and getattr(participant, "identity", None) == self.config.caller_identity:
            self.keypad.press(ev.digit)

    def _on_keypad_entry(self, digits: str) -> None:
        """Keys the phone caller pressed (one entry, keypad.py): an event on the dashboard,
        and a turn the agent answers, as if the caller had said it."""
        self.recorder.record_event("caller.dtmf", {"digits": digits})
        if self.session is None:
            return
        with contextlib.suppress(Exception):
            self.session.interrupt()
        self.session.generate_reply(user_input=keypad_text(digits))

    def _on_participant_disconnected(self, participant: Any) -> None:
        """A phone caller who hangs up does not come back: end the call now (the room is
        deleted, so the agent does not wait out the room's departure_timeout)."""
        if getattr(participant, "identity", None) != self.config.caller_identity or self._ended.is_set():
            return
        if self.phone_controls is not None and self.phone_controls.transferring:
            self.recorder.record_event("call.transferred", {"identity": participant.identity})
            self.end_reason = "transferred"
        else:
            self.recorder.record_event("caller.hung_up", {"identity": participant.identity})
            self.end_reason = "caller_hung_up"
        self.ended_by_platform = True
        self._ended.set()
        self.ctx.delete_room()
        self.ctx.shutdown(self.end_reason)

    def _on_session_final(self, state: str, reason: str) -> None:
        """The heartbeat found the session ended or failed while this job serves it: the
        platform's `agent.end` never arrived (Redis was down when it was sent)."""
        if self._ended.is_set():
            return
        logger.warning("the session is %s in the database; no end message reached this job: ending the call", state)
        self._on_control({"type": "agent.end", "reason": reason or f"session {state}"})

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
            if not await job_session.claim_session(config.session_id, self.ctx):
                return False
        self.recorder.start()
        metrics.SESSIONS_SERVED.labels(agent=config.agent.slug).inc()
        metrics.ACTIVE_SESSIONS.inc()
        self._counted = True
        vad = load_vad(turn_taking.vad_silence(config.agent))
        self.providers = build_providers(config.agent, vad=vad)
        tools = await self._build_tools()
        options = session_options(agent=config.agent, allow_interruptions=config.agent.allow_interruptions)
        detector = self.turn_detector = options["turn_handling"]["turn_detection"]
        session = AgentSession(
            stt=self.providers.stt,
            llm=self.providers.llm,
            tts=self.providers.tts,
            vad=vad,
            conn_options=session_conn_options(config.agent),
            **options,
        )
        self.session = session
        self.resilience = ChainMonitor(record_event=self.recorder.record_event, on_stage_failed=self._on_stage_failed)
        for stage_name in ("stt", "llm", "tts"):
            self.resilience.watch(stage_name, getattr(self.providers, stage_name))
        session.on("conversation_item_added", self._timed(self._on_item))
        session.on("function_tools_executed", self._timed(self._on_tools_executed))
        session.on("error", self._timed(self._on_error))
        session.on("close", self._on_close)
        agent = PlatformAgent(
            config=config,
            tracker=self.tracker,
            tools=tools,
            on_backchannel=self._on_backchannel,
            on_transcript=getattr(detector, "note_transcript", None),
        )

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
            await session.start(agent=agent, room=self.ctx.room, room_options=room_options(config), record=False)
            control.register_interrupt_rpc(self.ctx.room, self.interrupt)
            if config.phone:
                self.keypad = Keypad(self._on_keypad_entry)
                self.ctx.room.on("sip_dtmf_received", self._timed(self._on_dtmf))
                self.phone_controls = PhoneCallControls(
                    loop=asyncio.get_running_loop(),
                    room=self.ctx.room,
                    lkapi=self.ctx.api,
                    caller_identity=config.caller_identity,
                )
                call_controls.register(config.session_id, self.phone_controls)
            if config.dial_to and not await self._dial():
                return False
            if config.phone:  # after the dial: a callee who never answered did not hang up
                self.ctx.room.on("participant_disconnected", self._on_participant_disconnected)

        self._tasks.append(
            asyncio.create_task(
                control.listen_control(self.config.session_id, self._on_control),
                name="agent-control",
                context=control.listener_context(),  # nothing of this job outlives it through the layer
            )
        )
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="agent-heartbeat"))
        self.recorder.record_event(
            "agent.job_started",
            {
                "job_id": self.ctx.job.id,
                # Which worker, on which host, serves the call: with several workers (docs/deploy.md)
                # this is how a session's job is traced to a machine and its logs.
                "worker_id": getattr(self.ctx, "worker_id", "") or "",
                "host": socket.gethostname(),
                "pid": os.getpid(),
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

    async def _dial(self) -> bool:
        """A placed call: ring the callee (the session is ready to talk when they answer).
        False when nobody answered: the session has failed with the outcome; hang up."""
        config = self.config
        outcome = await job_session.dial_out(
            self.ctx,
            session_id=config.session_id,
            to=config.dial_to,
            trunk_id=config.outbound_trunk_id,
            identity=config.caller_identity,
        )
        if not outcome:
            return True
        self.end_reason = outcome
        self._ended.set()
        self.ctx.delete_room()
        self.ctx.shutdown(outcome)
        return False

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
        if self.keypad is not None:
            self.keypad.close()
        if self.phone_controls is not None:
            call_controls.unregister(self.config.session_id, self.phone_controls)
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
            asyncio.ensure_future(job_session.quiet_close(self.session))
        if self.call is not None:
            asyncio.ensure_future(self.call.audio_output.aclose())


async def entrypoint(ctx: JobContext) -> None:
    metadata = json.loads(ctx.job.metadata or "{}")
    if metadata.get(PROBE_METADATA_KEY) and local.current_call() is None:
        await job_session.answer_probe(ctx)
        return
    if metadata.get(PHONE_LINE_METADATA_KEY) and "session_id" not in metadata and local.current_call() is None:
        session_id = await job_session.open_phone_session(ctx, int(metadata[PHONE_LINE_METADATA_KEY]))
        if session_id is None:
            return
    else:
        session_id = str(metadata["session_id"])
    # A phone call's room name carries the caller's number: logs get it masked.
    bind_log_context(session_id=session_id, room=mask_room_name(getattr(ctx.room, "name", None) or "") or None)
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
                await job_session.end_session_if_live(session_id, runtime.end_reason)
            # One job per process: let the process exit (livekit waits on its threads).
            from agents_app.runtime.providers.factory import shutdown_offline

            shutdown_offline()

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
        await job_session.end_session_if_live(session_id, runtime.end_reason)
