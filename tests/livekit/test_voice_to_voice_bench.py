"""`bench/voice_to_voice.py --transport livekit` runs: one short round through a LiveKit
server of its own in this namespace (the tier's), and prints the comparison's JSON.

Only the shape and that each side's caller heard its answer: never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.platform import BASE_DIR, Platform
from voiceplatform import netns

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(420)]

STAGES = {"eou", "stt", "llm_ttft", "tts_ttfb", "e2e", "playout_transport"}


def test_the_benchmark_compares_both_agents_over_the_real_server(tmp_path: Path) -> None:
    assert os.environ.get(netns.ADDRESS_ENV), "the tier runs in a network namespace (run_tier.py)"
    database = Platform(tmp_path)  # only for its fresh database and data directory
    try:
        done = subprocess.run(
            [sys.executable, "bench/voice_to_voice.py", "--transport", "livekit", "--rounds", "1", "--turns", "1"],
            cwd=BASE_DIR,
            env={**database.env, "VOICE_DEV_DEFAULTS": "true"},
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        database.cleanup()
    assert done.returncode == 0, f"the benchmark failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == "voice_to_voice" and result["transport"] == "livekit", result
    for side in ("bare", "platform"):
        summary = result[side]
        assert summary["turns"] == 1, f"{side}: the caller did not hear its one answer: {result}"
        for key in ("heard_p50_ms", "heard_p90_ms", "heard_p99_ms"):
            assert isinstance(summary[key], float) and summary[key] > 0, (side, key, result)
        assert set(summary["stages_p50_ms"]) == STAGES, result
        assert summary["stages_p50_ms"]["e2e"] is not None, f"{side}: the agent measured no e2e: {result}"
    assert isinstance(result["ratio"], float) and result["ratio"] > 0, result
