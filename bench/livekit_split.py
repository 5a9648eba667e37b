"""Where the playout/transport part of the heard gap goes over LiveKit (issue 19).

A diagnostic run of bench/voice_to_voice.py's LiveKit conversation (the bare
livekit-agents peer and the platform, as that benchmark runs them) with probes on both sides, all
on one clock (this process runs the caller and the agent):

- caller_end: the caller's last sample above the threshold sent (its HeardMeter);
- agent_in_end: that sample arriving in the agent's room input (the last input frame above
  the threshold, dated by its position in the frame: frames are delivered when complete);
- vad_end: the agent's end of speech as livekit-agents dates it (`stopped_speaking_at`:
  the VAD's END_OF_SPEECH time − its silence and inference durations) — e2e starts here;
- push: `started_speaking_at`, the first TTS frame handed to the room's AudioSource — e2e
  ends here;
- lead: the TTS audio before its first sample above the threshold (Piper's leading silence);
- heard: the first agent sample above the threshold at the caller.

heard − e2e = (vad_end − caller_end) + (heard − push), split as
in_transport = agent_in_end − caller_end, vad_placement = vad_end − agent_in_end,
lead, out_transport = heard − push − lead.

Usage (inside the namespace, as bench/voice_to_voice.py runs itself):
  .venv/bin/python bench/livekit_split.py [--rounds 1] [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

import numpy as np

from voiceplatform import livekit_dev, netns

BASE_DIR = Path(__file__).resolve().parent.parent
WALL = time.time() - time.monotonic()  # this process's wall clock − monotonic clock

PROBE: dict[str, list[Any]] = {"in": [], "out": [], "assistant": []}


def _install_probes() -> None:
    from livekit import rtc
    from livekit.agents.voice.room_io import _input, _output

    from agents_app.runtime.simulator.heard import loud_span

    original_next = _input._ParticipantAudioInputStream.__anext__

    async def next_frame(self: Any) -> rtc.AudioFrame:
        frame = await original_next(self)
        now = time.monotonic()
        span = loud_span(np.frombuffer(bytes(frame.data), dtype=np.int16), frame.sample_rate)
        if span is not None:  # the loud end's arrival: the frame is delivered when complete
            PROBE["in"].append(now - frame.duration + span[1])
        return frame

    _input._ParticipantAudioInputStream.__anext__ = next_frame  # type: ignore[method-assign]

    original_forward = _output._ParticipantAudioOutput._forward_audio

    async def forward(self: Any) -> None:
        source = self._audio_source
        original_capture = source.capture_frame
        state = {"pushed": 0.0, "segment": None}

        async def capture(frame: rtc.AudioFrame) -> None:
            if self._source_pushed_duration <= frame.duration + 1e-6:  # a segment's first frame
                state["segment"] = {"push": time.monotonic(), "lead": None, "pushed": 0.0}
                PROBE["out"].append(state["segment"])
            segment = state["segment"]
            if segment is not None and segment["lead"] is None:
                span = loud_span(np.frombuffer(bytes(frame.data), dtype=np.int16), frame.sample_rate)
                if span is not None:
                    segment["lead"] = segment["pushed"] + span[0]
                segment["pushed"] += frame.duration
            await original_capture(frame)

        source.capture_frame = capture
        await original_forward(self)

    _output._ParticipantAudioOutput._forward_audio = forward  # type: ignore[method-assign]


def _split(ear: Any) -> list[dict[str, float]]:
    """Per measured utterance, the parts in ms."""
    rows = []
    meter = ear.meter
    measured = meter.measurements()
    for number, utterance in enumerate(meter.utterances):
        gap = measured[number]["heard_gap_ms"]
        end = utterance.ended_at
        if gap is None or end is None:
            continue
        heard = end + gap / 1000.0
        arrivals = [t for t in PROBE["in"] if end - 0.05 <= t <= heard]
        segments = [s for s in PROBE["out"] if end < s["push"] <= heard]
        if not arrivals or not segments:
            continue
        segment = segments[-1]
        push = segment["push"]
        e2e = next((e for (p, e) in PROBE["assistant"] if abs((p - WALL) - push) < 0.02), None)
        row = {
            "heard": gap,
            "in_transport": (max(arrivals) - end) * 1000.0,
            "lead": (segment["lead"] or 0.0) * 1000.0,
            "out_transport": (heard - push - (segment["lead"] or 0.0)) * 1000.0,
        }
        if e2e is not None:
            vad_end = push - e2e
            row["e2e"] = e2e * 1000.0
            row["vad_placement"] = (vad_end - max(arrivals)) * 1000.0
            row["heard_minus_e2e"] = gap - e2e * 1000.0
        rows.append({k: round(v, 1) for k, v in row.items()})
    return rows


async def main(rounds: int, turns: int) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from livekit.agents import AgentSession
    from livekit.agents.llm import ChatMessage

    from agents_app.runtime.worker.config import load_job_config
    from bench import livekit_calls
    from bench.voice_calls import SENTENCES, prepare, setup_session

    _install_probes()
    original_emit = AgentSession.emit

    def emit(self: Any, event: str, *args: Any) -> Any:
        if event == "conversation_item_added":
            item = args[0].item
            if isinstance(item, ChatMessage) and item.role == "assistant":
                m = item.metrics
                if m.get("e2e_latency") is not None and m.get("started_speaking_at") is not None:
                    PROBE["assistant"].append((m["started_speaking_at"], m["e2e_latency"]))
        return original_emit(self, event, *args)

    AgentSession.emit = emit  # type: ignore[method-assign]

    ears: dict[str, list[Any]] = {"bare": [], "platform": []}
    original_ear = livekit_calls.RoomEar

    class KeptEar(original_ear):  # type: ignore[misc,valid-type]
        def __init__(self, utterances: list[Any]) -> None:
            super().__init__(utterances)
            ears[KeptEar.side].append(self)

        side = "bare"

    livekit_calls.RoomEar = KeptEar
    utterances = await prepare(turns)
    server = SERVER
    for n in range(rounds):
        session_id, _ = await sync_to_async(setup_session)("bench-voice-to-voice", list(SENTENCES))
        config = await load_job_config(session_id)
        for which in ("bare", "platform") if n % 2 == 0 else ("platform", "bare"):
            KeptEar.side = which
            room = f"bench-split-{n}-{which}-{session_id[:8]}"
            run = livekit_calls.run_bare_livekit if which == "bare" else livekit_calls.run_platform_livekit
            await run(server, config, utterances, room)
    out: dict[str, Any] = {"name": "livekit_split"}
    for side, side_ears in ears.items():
        rows = [r for ear in side_ears for r in _split(ear)]
        keys = sorted({k for r in rows for k in r})
        out[side] = {
            "turns": len(rows),
            "p50_ms": {k: round(statistics.median([r[k] for r in rows if k in r]), 1) for k in keys},
            "rows": rows,
        }
    return out


SERVER: Any = None

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not os.environ.get(netns.ADDRESS_ENV):
        sys.exit(
            netns.run_inside(
                "vpsplit",
                [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                env=dict(os.environ),
                cwd=BASE_DIR,
            )
        )
    import django

    from bench.livekit_calls import livekit_server

    with livekit_server() as server:
        os.environ.update(livekit_dev.platform_env(server))
        django.setup()
        SERVER = server
        print(json.dumps(asyncio.run(main(args.rounds, args.turns))))
