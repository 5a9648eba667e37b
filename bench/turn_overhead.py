"""What the platform adds to a voice turn: bare AgentSession vs the platform entrypoint.

Runs the same scripted offline conversation (Piper-voiced caller, Silero VAD,
PocketSphinx, the offline LLM stand-in, Piper, the local real-time transport) through

- bare: an AgentSession with the same providers and options and no platform code, and
- platform: `run_local_job` → `entrypoint`, with DB loading, turn recording, the
  batching writer, broadcasts, budgets, heartbeats and the control listener on.

Rounds alternate bare/platform so both see the same machine load. Prints one JSON line:
{"name": "turn_overhead", "turns", "bare_e2e_p50_ms", "platform_e2e_p50_ms", "ratio",
"added_p99_ms"}. `ratio` is platform over bare median e2e latency; `added_p99_ms` is the
p99 over turns of the time the platform's own hooks held the event loop in a turn.
Targets: ratio <= 1.01, added_p99_ms <= 2.

Usage: .venv/bin/python bench/turn_overhead.py [--rounds 2] [--turns 4]
(uses DATABASE_URL/REDIS_URL like every process, else SQLite + embedded Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

SENTENCES = (
    "I would like to place an order for two pizzas.",
    "What time do you open tomorrow?",
    "Can you send it to my office?",
    "Thank you very much.",
    "Do you have any vegetarian options?",
    "How long will the delivery take?",
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def _setup_session() -> tuple[str, Any]:
    from agents_app.models import Agent
    from agents_app.services import prompt_draft_create, prompt_publish
    from sessions_app.models import VoiceSession

    agent, created = Agent.objects.get_or_create(slug="bench-turn-overhead", defaults={"name": "Benchmark agent"})
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


async def _converse(call: Any, utterances: list[tuple[Any, int]]) -> None:
    await call.wait_agent_speaking(True, timeout=60)
    await call.wait_agent_speaking(False, timeout=60)
    for audio, rate in utterances:
        await asyncio.sleep(0.3)
        call.push_caller_audio(audio, rate)
        await call.wait_agent_speaking(True, timeout=60)
        await call.wait_agent_speaking(False, timeout=60)
    await asyncio.sleep(0.5)  # let the last assistant message commit


async def _drain_frames(call: Any) -> None:
    async for _ in call.agent_frames():
        pass


async def run_bare(agent: Any, greeting: str, instructions: str, utterances: list[tuple[Any, int]]) -> list[float]:
    from livekit.agents import Agent, AgentSession
    from livekit.agents.llm import ChatMessage
    from livekit.agents.testing import fake_job_context
    from livekit.agents.voice.transcription import TranscriptSynchronizer

    from agents_app.runtime.providers.factory import build_providers, load_vad
    from agents_app.runtime.worker.local import LocalCall
    from agents_app.runtime.worker.platform_agent import session_options

    call = LocalCall()
    call._bind(asyncio.get_running_loop())
    providers = build_providers(agent)
    e2e: list[float] = []

    def on_item(ev: Any) -> None:
        item = ev.item
        if isinstance(item, ChatMessage) and item.role == "assistant" and item.metrics.get("e2e_latency") is not None:
            e2e.append(item.metrics["e2e_latency"] * 1000.0)

    with fake_job_context(job_id="bench-bare"):
        session = AgentSession(
            stt=providers.stt, llm=providers.llm, tts=providers.tts, vad=load_vad(), **session_options()
        )
        session.on("conversation_item_added", on_item)
        sync = TranscriptSynchronizer(next_in_chain_audio=call.audio_output, next_in_chain_text=None)
        session.input.audio = call.audio_input
        session.output.audio = sync.audio_output
        session.output.transcription = sync.text_output
        call.audio_output.start()
        frames = asyncio.create_task(_drain_frames(call))
        await session.start(agent=Agent(instructions=instructions))
        session.say(greeting)
        await _converse(call, utterances)
        await session.aclose()
        await sync.aclose()
        await call.audio_output.aclose()
        call.hangup()
        await frames
    return e2e


async def run_platform(session_id: str, utterances: list[tuple[Any, int]]) -> tuple[list[float], list[float]]:
    from agents_app.runtime.worker.entrypoint import entrypoint
    from agents_app.runtime.worker.local import LocalCall, run_local_job

    call = LocalCall()
    job = asyncio.create_task(run_local_job(session_id=session_id, call=call, entrypoint=entrypoint))
    frames = asyncio.create_task(_drain_frames(call))
    await _converse(call, utterances)
    runtime = call.job
    call.hangup()
    await asyncio.wait_for(job, 60)
    await frames
    written = [t for t in runtime.recorder.turns_written if t.get("user_text")]
    e2e = [t["e2e_ms"] for t in written if t.get("e2e_ms") is not None]
    hooks = [t["hook_ms"] for t in runtime.recorder.turns_written]
    return e2e, hooks


async def main(rounds: int, turns: int) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from django.core.management import call_command

    from agents_app.runtime.providers import piper
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.entrypoint import prewarm as setup
    from agents_app.runtime.worker.local import prewarm

    await sync_to_async(call_command)("migrate", verbosity=0)
    await asyncio.to_thread(prewarm, setup)
    script = [SENTENCES[i % len(SENTENCES)] for i in range(turns)]
    utterances = [piper.synthesize(text) for text in script]  # synthesized before timing

    bare: list[float] = []
    platform: list[float] = []
    hooks: list[float] = []
    for _ in range(rounds):
        session_id, agent = await sync_to_async(_setup_session)()
        config = await load_job_config(session_id)
        bare += await run_bare(config.agent, config.greeting, config.instructions, utterances)
        e2e, hook_ms = await run_platform(session_id, utterances)
        platform += e2e
        hooks += hook_ms

    bare_p50 = statistics.median(bare) if bare else 0.0
    platform_p50 = statistics.median(platform) if platform else 0.0
    return {
        "name": "turn_overhead",
        "turns": min(len(bare), len(platform)),
        "bare_e2e_p50_ms": round(bare_p50, 1),
        "platform_e2e_p50_ms": round(platform_p50, 1),
        "ratio": round(platform_p50 / bare_p50, 3) if bare_p50 else None,
        "added_p99_ms": round(_percentile(hooks, 99), 3),
    }


if __name__ == "__main__":  # the PocketSphinx pool spawns processes: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import django

    django.setup()
    result = asyncio.run(main(args.rounds, args.turns))
    print(json.dumps(result))
