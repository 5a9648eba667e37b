"""Voice to voice: the gap the caller hears, platform agent vs a bare livekit-agents agent.

Same run, same providers (Silero VAD, PocketSphinx or Moonshine, the stand-in LLM, Piper), same
scripted caller (bench/voice_calls.py `CallerEar`: Piper-voiced lines, timing on its own
clock from the last voiced sample it sent to the first agent frame it hears above an
energy threshold), rounds alternating bare/platform so both see the same machine load.

STT: PocketSphinx with a phrase grammar of the caller's lines (the agent's `stt_phrases`,
as a menu-like deployment would set them), or Moonshine, the open-vocabulary offline
default, with `--open-vocabulary`.

Transport (`--transport`, said in the output as `"transport"`):
- `local` (default): the local transport (`LocalCall`: paced 20 ms input, a real-time
  playout clock);
- `livekit`: a real LiveKit server (the one `make livekit-server` builds), the caller
  joining over WebRTC with the livekit rtc SDK and the agent as a participant of the room
  (bench/livekit_calls.py). WebRTC never uses loopback, so the benchmark runs itself
  inside a network namespace of its own (voiceplatform/netns.py: needs root and `ip`) with
  the server; PostgreSQL through its unix socket, the embedded Redis;
- `auto`: `livekit` when the server and a namespace are available, else `local`.

Prints one JSON line: {"name": "voice_to_voice", "transport", "turns", "bare": {heard
p50/p90/p99}, "platform": {…}, "ratio" (platform heard p50 / bare heard p50), and the
stage decomposition of each side's median turn: eou (end-of-speech detection), stt,
llm_ttft, tts_ttfb, e2e (the agent's own end of speech → first audio out) and
"playout_transport" = heard − e2e (what only the caller sees: the VAD's wait for silence
before the agent's clock starts, output buffering, transport)}. Target: ratio ≤ 1.02.

Usage: .venv/bin/python bench/voice_to_voice.py [--rounds 3] [--turns 4] [--open-vocabulary]
                                                [--transport local|livekit|auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from bench.voice_calls import SENTENCES, STAGES, RunResult, percentile, prepare, run_bare, run_platform, setup_session
from voiceplatform import livekit_dev, netns

BASE_DIR = Path(__file__).resolve().parent.parent


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarize(results: list[RunResult]) -> dict[str, Any]:
    heard = [g for r in results for g in r.heard_ms]
    stages = [t for r in results for t in r.stages]
    decomposition = {stage: _median([t[stage] for t in stages if t.get(stage) is not None]) for stage in STAGES}
    heard_p50 = _median(heard)
    e2e = decomposition["e2e"]
    decomposition["playout_transport"] = round(heard_p50 - e2e, 1) if heard_p50 is not None and e2e else None
    return {
        "turns": len(heard),
        "heard_p50_ms": heard_p50,
        "heard_p90_ms": round(percentile(heard, 90), 1),
        "heard_p99_ms": round(percentile(heard, 99), 1),
        "stages_p50_ms": decomposition,
    }


async def main(rounds: int, turns: int, grammar: bool, server: Any = None) -> dict[str, Any]:
    """`server`: a LiveKit server (livekit_dev.ServerConfig) to run the calls through, else
    the local transport."""
    from asgiref.sync import sync_to_async

    from agents_app.runtime.worker.config import load_job_config
    from bench.livekit_calls import run_bare_livekit, run_platform_livekit

    utterances = await prepare(turns)
    bare: list[RunResult] = []
    platform: list[RunResult] = []
    for n in range(rounds):
        phrases = list(SENTENCES) if grammar else None
        session_id, _agent = await sync_to_async(setup_session)("bench-voice-to-voice", phrases)
        config = await load_job_config(session_id)
        for which in ("bare", "platform") if n % 2 == 0 else ("platform", "bare"):  # alternate who goes first
            room = f"bench-v2v-{n}-{which}-{session_id[:8]}"
            if which == "bare" and server is not None:
                bare.append(await run_bare_livekit(server, config, utterances, room))
            elif which == "bare":
                bare.append(await run_bare(config.agent, config.greeting, config.instructions, utterances))
            elif server is not None:
                platform.append(await run_platform_livekit(server, config, utterances, room))
            else:
                platform.append(await run_platform(session_id, utterances))
    bare_summary, platform_summary = summarize(bare), summarize(platform)
    b, p = bare_summary["heard_p50_ms"], platform_summary["heard_p50_ms"]
    return {
        "name": "voice_to_voice",
        "transport": "local" if server is None else "livekit",
        "stt": "phrase grammar" if grammar else "open vocabulary",
        "bare": bare_summary,
        "platform": platform_summary,
        "ratio": round(p / b, 3) if b and p else None,
    }


def _livekit_missing() -> str:
    """Why the LiveKit mode cannot run here ('' when it can)."""
    if livekit_dev.server_binary() is None:
        return "no livekit-server (`make livekit-server` builds it; it needs Go)"
    return "" if os.environ.get(netns.ADDRESS_ENV) else netns.missing()


def _run(args: argparse.Namespace, server: Any = None) -> None:
    import django

    if server is not None:
        os.environ.update(livekit_dev.platform_env(server))  # the platform mints the caller's token
    django.setup()
    print(json.dumps(asyncio.run(main(args.rounds, args.turns, grammar=not args.open_vocabulary, server=server))))


if __name__ == "__main__":  # the PocketSphinx pool spawns processes: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument(
        "--open-vocabulary",
        action="store_true",
        help="Moonshine (open vocabulary) instead of PocketSphinx with the caller's lines as its grammar",
    )
    parser.add_argument("--transport", choices=("local", "livekit", "auto"), default="local")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    transport = args.transport
    if transport == "auto":
        transport = "local" if _livekit_missing() else "livekit"
    if transport == "local":
        _run(args)
    elif reason := _livekit_missing():
        sys.exit(f"voice_to_voice --transport livekit: {reason}")
    elif not os.environ.get(netns.ADDRESS_ENV):  # run this again inside a namespace of its own
        argv = [*sys.argv[1:], "--transport", "livekit"]
        sys.exit(
            netns.run_inside(
                "vpbench", [sys.executable, str(Path(__file__).resolve()), *argv], env=dict(os.environ), cwd=BASE_DIR
            )
        )
    else:
        from bench.livekit_calls import livekit_server

        with livekit_server() as server:
            _run(args, server)
