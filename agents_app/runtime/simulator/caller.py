"""One simulated call: a client app plus a caller who speaks with the local TTS.

It opens the session through the HTTP API, connects to the `url` the API returned with
the token it got, speaks its lines in real time, listens to the agent, follows the
scenario's steps, ends the session, and checks the stored result against the scenario's
expectations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents_app.runtime.simulator.api import PlatformApiError, PlatformClient
from agents_app.runtime.simulator.expectations import expectation_problems, turn_texts
from agents_app.runtime.simulator.heard import HeardMeter, match_turns
from agents_app.runtime.simulator.recording import CallRecording
from agents_app.runtime.simulator.scenarios import Scenario, Step
from agents_app.runtime.simulator.transport import CallerTransport, TransportError

FRAME_SECONDS = 0.02
SPEAK_TIMEOUT = 45.0
# Silence the caller leaves after a line, so the VAD sees the end of speech.
TRAILING_SILENCE_SECONDS = 0.6
# After the call, how long the caller waits for its last turn to be stored before it
# matches its utterances to the stored turns.
HEARD_MATCH_WAIT_SECONDS = 10.0


class CallFailed(Exception):
    pass


@dataclass
class CallResult:
    scenario: str
    number: int
    session_id: str = ""
    ok: bool = False
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    agent_restarts: int = 0
    tool_retries: list[dict[str, Any]] = field(default_factory=list)
    side_effects: int | None = None
    duration_s: float = 0.0
    recording: CallRecording | None = None
    transport: str = ""  # HostTransport (local agent host) or LiveKitTransport
    # The caller's heard gaps as the platform answered each report (HeardOut), and the
    # utterances it could not pair with a stored turn (docs/latency.md).
    heard: list[dict[str, Any]] = field(default_factory=list)
    heard_unmatched: int = 0


@functools.lru_cache(maxsize=64)
def _speech(text: str) -> tuple[np.ndarray, int]:
    from agents_app.runtime.providers.piper import synthesize

    return synthesize(text)


async def speech_for(text: str) -> tuple[np.ndarray, int]:
    """Piper speech for a line (cached: scenarios repeat their lines)."""
    return await asyncio.to_thread(_speech, text)


async def speak(
    transport: CallerTransport, text: str, *, on_frame: Callable[[np.ndarray, int], None] | None = None
) -> None:
    """Say a line in real time: 20 ms frames of Piper speech, then the trailing silence."""
    samples, rate = await speech_for(text)
    frame = int(rate * FRAME_SECONDS)
    silence = np.zeros(int(rate * TRAILING_SILENCE_SECONDS), dtype=np.int16)
    audio = np.concatenate([samples, silence])
    clock = time.monotonic()
    for start in range(0, len(audio), frame):
        chunk = audio[start : start + frame]
        if on_frame is not None:
            on_frame(chunk, rate)
        await transport.send_audio(chunk, rate)
        clock += len(chunk) / rate
        delay = clock - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class SimulatedCall:
    def __init__(
        self,
        *,
        scenario: Scenario,
        number: int,
        api: PlatformClient,
        make_transport: Callable[..., CallerTransport],
        progress: Callable[[str], None],
        shared_db: bool,
    ) -> None:
        self.scenario = scenario
        self.api = api
        self.result = CallResult(scenario=scenario.name, number=number)
        self.recording = CallRecording()
        self.result.recording = self.recording
        self.heard = HeardMeter()
        self._progress = progress
        self._shared_db = shared_db
        self._make_transport = make_transport
        self.transport: CallerTransport | None = None  # made for the url the API returns
        self.session_id = ""

    def note(self, text: str) -> None:
        at = self.recording.note(text)
        sid = self.session_id[:8] or "--------"
        self._progress(f"call {self.result.number:>3} {self.scenario.name:<16} {sid} +{at:5.1f}s {text}")

    # -- the call ---------------------------------------------------------------------
    async def run(self) -> CallResult:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._run(), self.scenario.timeout)
            await self._check()
            self.result.ok = True
            self.note("completed")
        except TimeoutError:
            self._fail(f"timed out after {self.scenario.timeout:.0f} s")
        except (CallFailed, TransportError, PlatformApiError) as exc:
            self._fail(str(exc))
        except Exception as exc:  # one broken call must not stop the others
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            await self._cleanup()
            self.result.duration_s = round(time.monotonic() - started, 2)
        return self.result

    def _fail(self, message: str) -> None:
        self.result.error = message
        self.note(f"FAILED: {message}")

    async def _run(self) -> None:
        caller_id = self.scenario.caller_id or f"sim-{self.scenario.name}-{uuid.uuid4().hex[:8]}"
        created = await self.api.session_create(
            agent=self.scenario.agent,
            user_id=caller_id,
            metadata={"simulator": True, "scenario": self.scenario.name, **self._impairment_metadata()},
        )
        self.session_id = self.result.session_id = str(created["session_id"])
        self.note(f"session created (room {created['room']})")
        self.transport = self._new_transport(str(created["url"]))
        self.result.transport = type(self.transport).__name__
        await self.transport.connect(created["url"], created["token"])
        self.note(f"connected to {created['url']}")
        for step in self.scenario.steps:
            await self._step(step)
        await self._report_heard()

    def _on_agent_audio(self, samples: np.ndarray, rate: int) -> None:
        self.heard.agent_audio(samples, rate)
        self.recording.add_agent(samples, rate)

    def _on_caller_frame(self, samples: np.ndarray, rate: int) -> None:
        self.heard.caller_frame(samples, rate)
        self.recording.add_caller(samples, rate)

    def _new_transport(self, url: str) -> CallerTransport:
        transport = self._make_transport(url, on_agent_audio=self._on_agent_audio, on_note=self.note)
        transport.session_id = self.session_id
        if transport.applies_impairment and getattr(self.scenario, "impairment", None):
            from agents_app.runtime.worker.impairment import Impairment

            transport.impairment = Impairment.from_config(dict(self.scenario.impairment))
        return transport

    def _impairment_metadata(self) -> dict[str, Any]:
        # The local agent host applies it to this caller's audio (worker/impairment.py).
        impairment = getattr(self.scenario, "impairment", None)
        return {"network_impairment": dict(impairment)} if impairment else {}

    async def _step(self, step: Step) -> None:
        handler = getattr(self, f"_do_{step.kind}")
        await handler(step)

    async def _speak(self, text: str, *, barge_in: bool = False) -> None:
        self.note(f'caller says "{text}"')
        self.heard.utterance_started(text, barge_in=barge_in)
        try:
            await speak(self.transport, text, on_frame=self._on_caller_frame)
        finally:
            self.heard.utterance_ended()

    async def _wait_agent_spoke_for(self, seconds: float, timeout: float) -> None:
        await self.transport.wait_speaking(True, timeout)
        since = self.transport.speaking_since or time.monotonic()
        delay = since + seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not self.transport.agent_speaking:
            raise CallFailed(f"the agent stopped speaking before {seconds:.1f} s; nothing to interrupt")

    async def _do_say(self, step: Step) -> None:
        await self._speak(str(step.args))

    async def _do_wait_for_agent(self, step: Step) -> None:
        timeout = float(step.arg("timeout", SPEAK_TIMEOUT))
        try:
            await self.transport.wait_speaking(True, timeout)
            self.note("agent speaking")
            await self.transport.wait_speaking(False, timeout * 2)
        except TimeoutError as exc:
            raise CallFailed(f"the agent did not answer within {timeout:.0f} s") from exc
        self.note("agent done")
        await asyncio.sleep(float(step.arg("quiet", 0.3)))

    async def _do_barge_in(self, step: Step) -> None:
        after = float(step.arg("after", 2.0))
        try:
            await self._wait_agent_spoke_for(after, float(step.arg("timeout", SPEAK_TIMEOUT)))
        except TimeoutError as exc:
            raise CallFailed("the agent never started speaking; nothing to barge in on") from exc
        self.note("barging in")
        await self._speak(str(step.args["say"]), barge_in=True)

    async def _do_interrupt(self, step: Step) -> None:
        after = float(step.arg("after", 2.0))
        try:
            await self._wait_agent_spoke_for(after, float(step.arg("timeout", SPEAK_TIMEOUT)))
        except TimeoutError as exc:
            raise CallFailed("the agent never started speaking; nothing to interrupt") from exc
        await self.api.session_interrupt(self.session_id)
        self.note("POST /interrupt sent")
        try:
            await self.transport.wait_speaking(False, 10)
        except TimeoutError as exc:
            raise CallFailed("the agent kept speaking 10 s after the client interrupt") from exc
        self.note("agent stopped")

    async def _do_pause(self, step: Step) -> None:
        await asyncio.sleep(float(step.args))

    async def _do_wait_turns(self, step: Step) -> None:
        count = int(step.args["count"])
        with_tool = bool(step.arg("with_tool_call", False))
        deadline = time.monotonic() + float(step.arg("timeout", 30))
        while True:
            detail = await self.api.session_get(self.session_id)
            turns = detail.get("turns") or []
            if len(turns) >= count and (not with_tool or any(t.get("tool_calls") for t in turns)):
                self.note(f"{len(turns)} turns stored")
                return
            if time.monotonic() > deadline:
                what = f"{count} turns" + (" with a tool call" if with_tool else "")
                raise CallFailed(f"expected {what}, the session has {len(turns)}: {turn_texts(turns)}")
            await asyncio.sleep(0.5)

    async def _do_drop(self, step: Step) -> None:
        self.note("line drops")
        await self.transport.drop()

    async def _do_reconnect(self, step: Step) -> None:
        if self.transport.recovered_by_itself():
            # LiveKit: the SDK reconnected after the drop (a new participant, counted as a
            # reconnect by the platform's webhook). A real client asks for no new token then.
            self.note("the LiveKit SDK reconnected by itself: no POST /reconnect needed")
            return
        answer = await self.api.session_reconnect(self.session_id)
        self.note(f"POST /reconnect → {answer.get('state')} (reconnect #{answer.get('reconnect_count')})")
        await self.transport.connect(answer["url"], answer["token"])
        self.note("reconnected")

    async def _do_agent_restart(self, step: Step) -> None:
        self.note("killing the agent job")
        await self.transport.agent_restart()
        self.result.agent_restarts += 1
        self.note("a new agent job took the session over")

    async def _do_retry_tool(self, step: Step) -> None:
        """An external agent service repeats the agent's last tool call through the public
        API, as after a lost response: the same request twice with one Idempotency-Key.
        The first runs the tool, the retry must be a replay (no second effect).

        Its own key: the ledger is scoped per API client and session, so a client never
        replays (and so never reads) the agent worker's calls or another client's.
        """
        detail = await self.api.session_get(self.session_id)
        calls = [c for t in detail.get("turns") or [] for c in t.get("tool_calls") or []]
        if not calls:
            raise CallFailed("no tool call to retry")
        call = calls[-1]
        agent_key = str(call.get("key") or f"{self.session_id}:{call.get('call_id')}")
        arguments = await self._tool_arguments(agent_key)
        key = f"{agent_key}:client-retry"
        for attempt in ("first", "retry"):
            answer = await self.api.tool_invoke(
                name=str(call["name"]), session_id=self.session_id, key=key, arguments=arguments
            )
            record = {
                "name": call["name"],
                "key": key,
                "status": answer.get("status"),
                "replayed": bool(answer.get("replayed")),
            }
            self.result.tool_retries.append(record)
            self.note(f"{attempt} API call of {call['name']} → {record['status']}, replayed={record['replayed']}")

    async def _tool_arguments(self, key: str) -> dict[str, Any]:
        """The stored request of that call (the ledger row), to send exactly the same one."""
        if not self._shared_db:
            raise CallFailed("retry_tool needs the platform's database to read the call's arguments")
        from asgiref.sync import sync_to_async

        from tools_app.models import ToolInvocation

        def _get() -> dict[str, Any] | None:
            row = ToolInvocation.objects.filter(scope=self.session_id, key=key).values("arguments").first()
            if row is None:
                row = ToolInvocation.objects.filter(key=key).values("arguments").first()
            return row["arguments"] if row else None

        arguments = await sync_to_async(_get, thread_sensitive=False)()
        if arguments is None:
            raise CallFailed(f"no ledger row for tool call {key}")
        return dict(arguments)

    async def _do_end(self, step: Step) -> None:
        await self.api.session_end(self.session_id)
        self.note("POST /end sent")
        # The host closes the connection once the job has flushed its turns.
        if not await self.transport.wait_closed(20):
            self.note("the agent host did not close the call within 20 s; hanging up")
            await self.transport.hangup()

    async def _report_heard(self) -> None:
        """Pair the caller's utterances with the stored caller turns and report each
        measured heard gap (PUT …/turns/{index}/heard, the same client key)."""
        measured = self.heard.measurements()
        if not measured:
            return
        deadline = time.monotonic() + HEARD_MATCH_WAIT_SECONDS
        while True:
            turns = (await self.api.session_get(self.session_id)).get("turns") or []
            pairs = match_turns(measured, turns)
            if pairs or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if not pairs:
            self.result.heard_unmatched = len(measured)
            stored = sum(1 for t in turns if t.get("user_text"))
            self.note(f"heard gaps not reported: {len(measured)} utterances, {stored} caller turns stored")
            return
        for index, measurement in pairs:
            if measurement["heard_gap_ms"] is None:
                continue
            self.result.heard.append(
                await self.api.turn_heard(
                    self.session_id,
                    index,
                    heard_gap_ms=measurement["heard_gap_ms"],
                    barge_in_ms=measurement["barge_in_ms"],
                )
            )
        gaps = ", ".join(f"{h['index']}: {h['heard_gap_ms']:.0f}" for h in self.result.heard)
        self.note(f"heard gaps reported (turn: ms) {gaps or 'none measured'}")

    # -- after the call ---------------------------------------------------------------
    async def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            # Always: a LiveKit room closed by the server still holds SDK resources.
            if self.transport is not None:
                await self.transport.hangup()
        if self.session_id:
            with contextlib.suppress(Exception):
                self.result.detail = await self.api.session_get(self.session_id)

    async def _check(self) -> None:
        detail = await self.api.session_get(self.session_id)
        self.result.detail = detail
        problems = await expectation_problems(self.scenario.expect, detail, self.result, shared_db=self._shared_db)
        if problems:
            raise CallFailed("; ".join(problems) + f" (turns: {turn_texts(detail.get('turns') or [])})")
