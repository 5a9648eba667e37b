"""What the platform adds to a voice turn: bare AgentSession vs the platform entrypoint.

Runs the same scripted offline conversation (Piper-voiced caller, Silero VAD,
Moonshine, the offline LLM stand-in, Piper, the local real-time transport) through

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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from bench.voice_calls import percentile, prepare, run_bare, run_platform, setup_session


async def main(rounds: int, turns: int) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from agents_app.runtime.worker.config import load_job_config

    utterances = await prepare(turns)
    bare: list[float] = []
    platform: list[float] = []
    hooks: list[float] = []
    for _ in range(rounds):
        session_id, _agent = await sync_to_async(setup_session)()
        config = await load_job_config(session_id)
        bare += (await run_bare(config.agent, config.greeting, config.instructions, utterances)).e2e()
        result = await run_platform(session_id, utterances)
        platform += result.e2e()
        hooks += result.hook_ms

    bare_p50 = statistics.median(bare) if bare else 0.0
    platform_p50 = statistics.median(platform) if platform else 0.0
    return {
        "name": "turn_overhead",
        "turns": min(len(bare), len(platform)),
        "bare_e2e_p50_ms": round(bare_p50, 1),
        "platform_e2e_p50_ms": round(platform_p50, 1),
        "ratio": round(platform_p50 / bare_p50, 3) if bare_p50 else None,
        "added_p99_ms": round(percentile(hooks, 99), 3),
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
