"""What bench/turn_overhead.py and bench/voice_to_voice.py share: one scripted offline
conversation over the local transport, run through a bare livekit-agents `AgentSession`
(same providers and options, no platform code) or through the platform's entrypoint,
with a caller that measures what it hears.

The caller (`CallerEar`) pushes each utterance (synthesized by Piper before timing) and
listens to the agent's audio as it is played, timing the heard gap with the simulated
caller's `HeardMeter`: from the last sample of its speech above the energy threshold to
the first agent sample above it, on its own monotonic clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents_app.runtime.simulator.heard import HeardMeter

SENTENCES = (
    "I would like to place an order for two pizzas.",
    "What time do you open tomorrow?",
    "Can you send it to my office?",
    "Thank you very much.",
    "Do you have any vegetarian options?",
    "How long will the delivery take?",
)
STAGES = ("eou", "stt", "llm_ttft", "tts_ttfb", "e2e")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def setup_session(slug: str = "bench-turn-overhead", phrases: list[str] | None = None) -> tuple[str, Any]:
    """A session of the benchmark agent `slug`; `phrases` switch its STT to a phrase grammar
    (PocketSphinx: the offline default, Moonshine, has none), without them it is Moonshine."""
    from agents_app.models import Agent
    from agents_app.services import prompt_draft_create, prompt_publish
    from sessions_app.models import VoiceSession

    agent, _ = Agent.objects.get_or_create(slug=slug, defaults={"name": "Benchmark agent"})
    stt_model = "pocketsphinx" if phrases else ""
    if (agent.stt_phrases or None) != phrases or agent.stt_model != stt_model:
        agent.stt_phrases, agent.stt_model = phrases or [], stt_model
        agent.save(update_fields=["stt_phrases", "stt_model"])
    version = agent.prompt_versions.filter(status="published").first()
    if version is None:
        version = prompt_publish(
            version=prompt_draft_create(
                agent=agent,
                instructions="You are the support agent of Acme. Be brief.",
                greeting="Hello, this is Acme support.",
            )
        )
    session = VoiceSession.objects.create(
        caller_id="bench", room_name=f"bench-{uuid.uuid4()}", agent=agent, prompt_version=version
    )
    return str(session.id), agent


@dataclass
class CallerEar:
    """The scripted caller: speaks its utterances and times what it hears with the
    simulated caller's own meter (agents_app/runtime/simulator/heard.py), so the benchmark
    and `simulate_calls` measure the heard gap the same way."""

    utterances: list[tuple[Any, int]]
    meter: HeardMeter = field(default_factory=HeardMeter)

    @property
    def gaps_ms(self) -> list[float]:
        return [m["heard_gap_ms"] for m in self.meter.measurements() if m["heard_gap_ms"] is not None]

    async def converse(self, call: Any) -> None:
        await self.agent_turn(call)
        for number, (audio, rate) in enumerate(self.utterances):
            await asyncio.sleep(0.3)
            self.meter.utterance_started(f"line {number}")
            await self.say(call, audio, rate)
            self.meter.utterance_ended()
            await self.agent_turn(call)
        await asyncio.sleep(0.5)  # let the last assistant message commit

    async def say(self, call: Any, audio: Any, rate: int) -> None:
        # The local transport plays a pushed utterance from now, in real time.
        self.meter.caller_frame(audio, rate)
        call.push_caller_audio(audio, rate)

    async def agent_turn(self, call: Any) -> None:
        """Wait for the agent to start speaking, then to finish."""
        await call.wait_agent_speaking(True, timeout=60)
        await call.wait_agent_speaking(False, timeout=60)

    async def listen(self, call: Any) -> None:
        async for frame in call.agent_frames():
            self.meter.agent_audio(np.frombuffer(frame.data, dtype=np.int16), frame.sample_rate)


@dataclass
class RunResult:
    heard_ms: list[float]
    stages: list[dict[str, float | None]]  # per answered caller turn, STAGES in ms
    hook_ms: list[float] = field(default_factory=list)

    def e2e(self) -> list[float]:
        return [t["e2e"] for t in self.stages if t.get("e2e") is not None]


def _ms(value: Any) -> float | None:
    return None if value is None else float(value) * 1000.0


def bare_stages() -> tuple[list[dict[str, float | None]], Callable[[Any], None]]:
    """The bare session's stages per answered caller turn, from livekit-agents' own metrics
    (a `conversation_item_added` handler and the list it fills)."""
    from livekit.agents.llm import ChatMessage

    stages: list[dict[str, float | None]] = []
    user: dict[str, float | None] = {}

    def on_item(ev: Any) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage):
            return
        if item.role == "user":
            user.update(
                eou=_ms(item.metrics.get("end_of_turn_delay")), stt=_ms(item.metrics.get("transcription_delay"))
            )
        elif item.role == "assistant" and item.metrics.get("e2e_latency") is not None:
            stages.append(
                {
                    **{"eou": None, "stt": None, **user},
                    "llm_ttft": _ms(item.metrics.get("llm_node_ttft")),
                    "tts_ttfb": _ms(item.metrics.get("tts_node_ttfb")),
                    "e2e": _ms(item.metrics.get("e2e_latency")),
                }
            )
            user.clear()

    return stages, on_item


async def run_bare(agent: Any, greeting: str, instructions: str, utterances: list[tuple[Any, int]]) -> RunResult:
    from livekit.agents import Agent, AgentSession
    from livekit.agents.testing import fake_job_context
    from livekit.agents.voice.transcription import TranscriptSynchronizer

    from agents_app.runtime.providers.factory import build_providers, load_vad
    from agents_app.runtime.worker import turn_taking
    from agents_app.runtime.worker.local import LocalCall
    from agents_app.runtime.worker.platform_agent import session_options

    call = LocalCall()
    call._bind(asyncio.get_running_loop())
    providers = build_providers(agent)
    stages, on_item = bare_stages()

    ear = CallerEar(utterances)
    with fake_job_context(job_id="bench-bare"):
        session = AgentSession(
            stt=providers.stt,
            llm=providers.llm,
            tts=providers.tts,
            vad=load_vad(turn_taking.vad_silence(agent)),
            **session_options(agent=agent),
        )
        session.on("conversation_item_added", on_item)
        sync = TranscriptSynchronizer(next_in_chain_audio=call.audio_output, next_in_chain_text=None)
        session.input.audio = call.audio_input
        session.output.audio = sync.audio_output
        session.output.transcription = sync.text_output
        call.audio_output.start()
        listening = asyncio.create_task(ear.listen(call))
        await session.start(agent=Agent(instructions=instructions))
        session.say(greeting)
        await ear.converse(call)
        await session.aclose()
        await sync.aclose()
        await call.audio_output.aclose()
        call.hangup()
        await listening
    return RunResult(heard_ms=ear.gaps_ms, stages=stages)


async def run_platform(session_id: str, utterances: list[tuple[Any, int]]) -> RunResult:
    from agents_app.runtime.worker.entrypoint import entrypoint
    from agents_app.runtime.worker.local import LocalCall, run_local_job

    call = LocalCall()
    ear = CallerEar(utterances)
    job = asyncio.create_task(run_local_job(session_id=session_id, call=call, entrypoint=entrypoint))
    listening = asyncio.create_task(ear.listen(call))
    await ear.converse(call)
    runtime = call.job
    call.hangup()
    await asyncio.wait_for(job, 60)
    await listening
    return platform_result(ear, runtime)


def platform_result(ear: CallerEar, runtime: Any) -> RunResult:
    """What the caller heard, and the stages the platform's job (a JobRuntime) recorded."""
    written = [t for t in runtime.recorder.turns_written if t.get("user_text")]
    stages = [{stage: t.get(f"{stage}_ms") for stage in STAGES} for t in written]
    hooks = [t["hook_ms"] for t in runtime.recorder.turns_written]
    return RunResult(heard_ms=ear.gaps_ms, stages=stages, hook_ms=hooks)


async def prepare(turns: int) -> list[tuple[Any, int]]:
    """Migrate, prewarm the offline models, and synthesize the caller's lines (untimed)."""
    from asgiref.sync import sync_to_async
    from django.core.management import call_command

    from agents_app.runtime.providers import piper
    from agents_app.runtime.worker.entrypoint import prewarm as setup
    from agents_app.runtime.worker.local import prewarm

    await sync_to_async(call_command)("migrate", verbosity=0)
    await asyncio.to_thread(prewarm, setup)
    return [piper.synthesize(SENTENCES[i % len(SENTENCES)]) for i in range(turns)]
