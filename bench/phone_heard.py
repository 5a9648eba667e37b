"""Heard latency by phone: what a SIP caller waits, side by side with a WebRTC caller.

Issue 29, item 9. One run, one real LiveKit server (`make livekit-server`) and LiveKit's SIP
service beside it (`make livekit-sip`; the two meet in an embedded Redis of this run), the
platform's own job runtime (`JobRuntime`, what `entrypoint` runs for a LiveKit job) as the
agent in this process, the same agent and offline providers (Silero VAD, PocketSphinx with
the caller's lines as its grammar or Moonshine with `--open-vocabulary`, the stand-in LLM,
Piper), and the same Piper-voiced caller lines, rounds alternating which caller goes first so
both see the same machine load:

- webrtc: the caller of bench/livekit_calls.py (the livekit rtc SDK over WebRTC, 22.05 kHz
  Piper speech on a continuous 20 ms microphone), timed by the simulator's `HeardMeter`;
- phone: the pjsua2 test phone (agents_app/runtime/simulator/sip_phone.py, G.711 only, as a
  carrier's narrowband line) dials a phone line (a `PhoneLine` applied to this server with
  `phone_line_sync`, what `manage.py phone_lines --sync` runs per line) through livekit-sip.
  The line's dispatch rule makes the call's room `phone-<line>-…`; no worker is registered,
  so this process joins that room as the agent (as a dispatched job would) and opens the
  phone session the way `entrypoint` does (`open_phone_session`). The phone plays each line
  (the same Piper speech resampled to 8 kHz) and records what it hears.

The heard gap, per caller line: from the last sample of the caller's speech above the
meter's energy threshold to the first sample of agent audio above it that the caller hears
(heard.py's rules: a turn the agent was still speaking into, or left unanswered, is not
measured). The WebRTC caller times it live; the phone's recording is replayed through the
same `HeardMeter` afterwards, on the recording's clock (the conference bridge's 20 ms ticks):
each line starts where the phone started playing it, placed on that clock from the monotonic
times the recording and the playback began (each known to within the pjsua2 call that set it
up, reported as `phone.clock_uncertainty_ms`, plus one bridge tick).

The agent's own e2e (its end of speech → its first audio out) is read from the database
(sessions_app_turn.e2e_ms) for both callers' turns, so `heard_minus_e2e_p50_ms` shows what
only the caller sees: the VAD's wait for silence before the agent's clock starts, the
transport, and for the phone the SIP service's resampling, RTP and G.711 legs and the
phone's jitter buffer.

WebRTC never uses loopback, so the benchmark runs itself inside a network namespace of its
own (voiceplatform/netns.py: needs root and `ip`) with the server, the SIP service, an
embedded Redis and, unless DATABASE_URL names PostgreSQL (reached through its unix socket),
a fresh SQLite database, all in a temporary DATA_DIR that is deleted at the end. The phone
line the run made is deleted from the database at the end.

Prints one JSON line: {"name": "phone_heard", "webrtc": {turns, heard p50/p90, stages_p50_ms,
heard_minus_e2e_p50_ms, …}, "phone": {… the same, codec, clock_uncertainty_ms}, "ratio"
(phone heard p50 / webrtc heard p50), "phone_minus_webrtc_p50_ms", "seconds"}; progress on
stderr. Exit 2 when livekit-server, livekit-sip, pjsua2 or a namespace is missing.

Usage: .venv/bin/python bench/phone_heard.py [--rounds 2] [--turns 3] [--open-vocabulary]
                                             [--timeout 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from agents_app.runtime.simulator.heard import HeardMeter, loud_span, match_turns
from bench.common import free_port, stop
from bench.voice_calls import SENTENCES, STAGES, percentile
from tests.ports import free_udp_port, free_udp_range
from voiceplatform import livekit_dev, netns

BASE_DIR = Path(__file__).resolve().parent.parent
NAME = "phone_heard"
AGENT_SLUG = "bench-phone-heard"
LINE_NUMBER = "+15550179"  # the bench's phone line (deleted at the end of the run)
CALLER_NUMBER = "+15557654321"
FRAME_S = 0.02  # the caller's frames as the meter sees them (and the bridge's tick)
PHONE_RATE = 8000  # what the phone plays: narrowband speech, as a G.711 line carries
# The phone moves on once the agent's answer has been quiet this long on its recording
# (longer than the meter's AGENT_QUIET_SECONDS and the pauses between TTS sentences).
ANSWER_QUIET_S = 1.0
ANSWER_TIMEOUT_S = 30.0
INNER_GRACE_S = 90.0  # after Ctrl-C or the timeout: the run's own clean-up, then SIGKILL
_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{NAME} {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- the summary (pure) ---------------------------------------------------------------------


@dataclass
class CallResult:
    """One call: the meter's measurement per caller line, and the turns the agent stored."""

    measurements: list[dict[str, Any]]
    turns: list[dict[str, Any]]
    codec: str = ""
    clock_uncertainty_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def paired_rows(call: CallResult) -> list[dict[str, float | None]]:
    """Per caller line: its heard gap and the stored turn's stages (None where the line
    matched no turn: heard.match_turns pairs lines and turns only when it is sure)."""
    by_index = {int(t["index"]): t for t in call.turns}
    matched = {id(m): by_index.get(index) for index, m in match_turns(call.measurements, call.turns)}
    rows = []
    for measured in call.measurements:
        turn = matched.get(id(measured)) or {}
        rows.append({"heard_ms": measured.get("heard_gap_ms"), **{s: turn.get(f"{s}_ms") for s in STAGES}})
    return rows


def summarize(calls: list[CallResult]) -> dict[str, Any]:
    """One caller's side: heard p50/p90 over every line of every call, the agent's stage
    medians over its stored caller turns, and heard − e2e (per turn where lines and turns
    pair, else the difference of the medians)."""
    rows = [row for call in calls for row in paired_rows(call)]
    heard = [r["heard_ms"] for r in rows if r["heard_ms"] is not None]
    turns = [t for call in calls for t in call.turns if t.get("user_text")]
    stages = {s: _median([float(t[f"{s}_ms"]) for t in turns if t.get(f"{s}_ms") is not None]) for s in STAGES}
    paired = [r["heard_ms"] - r["e2e"] for r in rows if r["heard_ms"] is not None and r["e2e"] is not None]
    heard_p50 = _median(heard)
    if paired:
        transport = _median(paired)
    elif heard_p50 is not None and stages["e2e"] is not None:
        transport = round(heard_p50 - stages["e2e"], 1)
    else:
        transport = None
    return {
        "calls": len(calls),
        "lines": len(rows),
        "turns": len(heard),  # lines whose heard gap was measured
        "unmeasured": len(rows) - len(heard),
        "agent_turns": len(turns),  # caller turns the agent stored
        "heard_p50_ms": heard_p50,
        "heard_p90_ms": round(percentile(heard, 90), 1) if heard else None,
        "heard_ms": [round(g, 1) for g in heard],
        "stages_p50_ms": stages,
        "heard_minus_e2e_p50_ms": transport,
        "heard_minus_e2e_paired_turns": len(paired),
    }


def compare(webrtc: dict[str, Any], phone: dict[str, Any]) -> dict[str, float | None]:
    w, p = webrtc.get("heard_p50_ms"), phone.get("heard_p50_ms")
    return {
        "ratio": round(p / w, 3) if w and p else None,
        "phone_minus_webrtc_p50_ms": round(p - w, 1) if w is not None and p is not None else None,
    }


def replay_heard(
    heard: np.ndarray, heard_rate: int, lines: list[tuple[str, float, np.ndarray, int]]
) -> list[dict[str, Any]]:
    """The phone's heard gaps: its recording (`heard`, time 0 = its first sample) and the
    lines it played (text, start on the recording's clock, samples, rate) fed through a
    `HeardMeter` in time order, 20 ms frames, as the WebRTC caller feeds its own live."""
    now = [0.0]
    meter = HeardMeter(clock=lambda: now[0])
    events: list[tuple[float, int, str, Any]] = []  # (time, tie-break, kind, payload)
    agent_frame = max(1, int(heard_rate * FRAME_S))
    for i in range(0, len(heard), agent_frame):
        events.append((i / heard_rate, 2, "agent", heard[i : i + agent_frame]))
    for number, (text, start, samples, rate) in enumerate(lines):
        frame = max(1, int(rate * FRAME_S))
        events.append((start, 0, "start", text or f"line {number}"))
        last = start
        for i in range(0, len(samples), frame):
            last = start + i / rate
            events.append((last, 1, "caller", (samples[i : i + frame], rate)))
        events.append((last + FRAME_S, 3, "end", None))
    for moment, _, kind, payload in sorted(events, key=lambda e: (e[0], e[1])):
        now[0] = moment
        if kind == "agent":
            meter.agent_audio(payload, heard_rate)
        elif kind == "caller":
            meter.caller_frame(*payload)
        elif kind == "start":
            meter.utterance_started(payload)
        else:
            meter.utterance_ended()
    return meter.measurements()


# --- the services of the run ------------------------------------------------------------------


@contextlib.contextmanager
def sip_service(server: livekit_dev.ServerConfig, data_dir: Path) -> Iterator[livekit_dev.SipConfig]:
    """LiveKit's SIP service (var/bin/livekit-sip) beside `server`, announcing this
    namespace's address (its first non-loopback IPv4) in Contact and SDP."""
    binary = livekit_dev.sip_binary()
    if binary is None:
        raise RuntimeError("no livekit-sip (`make livekit-sip` builds it)")
    rtp = free_udp_range(20)
    config = livekit_dev.SipConfig(
        server=server,
        sip_port=free_udp_port(),
        rtp_ports=f"{rtp}-{rtp + 19}",
        health_port=free_port(),
        log_level="warn",
    )
    log_path = data_dir / "livekit-sip.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        livekit_dev.sip_command(binary, livekit_dev.render_sip_config(config, data_dir)),
        env=livekit_dev.sip_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if not livekit_dev.sip_wait_ready(config, 30, proc):
            raise RuntimeError(f"LiveKit's SIP service did not start:\n{log_path.read_text()[-3000:]}")
        yield config
    finally:
        stop(proc, grace=15)
        log.close()


# --- the database -----------------------------------------------------------------------------


def setup_line(agent: Any, address: str) -> int:
    """The bench's phone line to `agent`, open to this namespace's address, applied to the
    server as `manage.py phone_lines --sync` applies each line (only this one: a shared
    database's other lines stay off this throwaway server). Returns its id."""
    from agents_app.models import PhoneLine
    from agents_app.services import phone_line_sync

    line, _ = PhoneLine.objects.update_or_create(
        number=LINE_NUMBER,
        defaults={"agent": agent, "allowed_addresses": [address], "active": True, "auth_username": "",
                  "auth_password": ""},
    )  # fmt: skip
    error = phone_line_sync(line=line)
    if error:
        raise RuntimeError(f"the phone line was not applied to LiveKit's SIP service: {error}")
    return line.pk


def remove_line(line_id: int) -> None:
    from agents_app.models import PhoneLine
    from agents_app.services import phone_line_delete

    line = PhoneLine.objects.filter(pk=line_id).first()
    if line is not None and phone_line_delete(line=line):
        PhoneLine.objects.filter(pk=line_id).delete()  # the server refused: the row goes anyway


def stored_turns(session_id: str) -> list[dict[str, Any]]:
    from sessions_app.models import Turn

    fields = ["index", "user_text", *(f"{s}_ms" for s in STAGES)]
    return list(Turn.objects.filter(session_id=session_id).order_by("index").values(*fields))


# --- the callers -------------------------------------------------------------------------------


async def run_webrtc(server: livekit_dev.ServerConfig, session_id: str, utterances: list[Any], room: str) -> CallResult:
    """bench/livekit_calls.py's platform call (`run_platform_livekit`), keeping the meter's
    per-line measurements so they pair with the stored turns."""
    from asgiref.sync import sync_to_async
    from livekit.agents.testing import fake_job_context

    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.entrypoint import JobRuntime
    from bench.livekit_calls import _call

    config = await load_job_config(session_id)
    async with _call(server, room, config, utterances) as (ear, agent_room):
        metadata = json.dumps({"session_id": config.session_id})
        with fake_job_context(room=agent_room, job_id="bench-phone-heard-webrtc", job_metadata=metadata) as ctx:
            runtime = JobRuntime(ctx=ctx, config=config, call=None)
            if not await runtime.start():
                raise RuntimeError(f"the platform's job would not serve session {config.session_id}")
            try:
                await ear.converse(None)
            finally:
                await runtime.aclose()
    turns = await sync_to_async(stored_turns)(config.session_id)
    return CallResult(measurements=ear.meter.measurements(), turns=turns, notes=list(ear.notes))


@dataclass
class SpokenLine:
    """What the phone plays for one caller line: a WAV of 8 kHz speech, and its samples."""

    text: str
    wav: Path
    samples: np.ndarray


def phone_lines(utterances: list[tuple[Any, int]], texts: list[str], directory: Path) -> list[SpokenLine]:
    """The caller's lines as the phone sends them (tests/livekit/test_phone_calls.py's
    `_question_wav`): the Piper speech resampled to 8 kHz, then 0.2 s of silence."""
    from livekit import rtc

    out = []
    for number, ((samples, rate), text) in enumerate(zip(utterances, texts, strict=True)):
        frame = rtc.AudioFrame(np.asarray(samples, dtype=np.int16).tobytes(), rate, 1, len(samples))
        resampler = rtc.AudioResampler(input_rate=rate, output_rate=PHONE_RATE, num_channels=1)
        pcm = b"".join(bytes(f.data) for f in [*resampler.push(frame), *resampler.flush()])
        path = directory / f"line-{number}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(PHONE_RATE)
            wav.writeframes(pcm + b"\x00\x00" * int(PHONE_RATE * 0.2))
        out.append(SpokenLine(text=text, wav=path, samples=np.frombuffer(pcm, dtype=np.int16).copy()))
    return out


def _timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """(monotonic before, after, result) of a blocking pjsua2 call, timed on its own thread."""
    before = time.monotonic()
    result = fn(*args)
    return before, time.monotonic(), result


async def _wait_heard(call: Any, runtime: Any, since_s: float, timeout: float) -> bool:
    """Until the phone's recording holds agent audio after `since_s` (its clock) followed by
    ANSWER_QUIET_S of quiet, and the agent is not speaking; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples, rate = await asyncio.to_thread(call.heard_so_far)
        start = int(since_s * rate)
        span = loud_span(samples[start:], rate) if len(samples) > start else None
        speaking = runtime.session is not None and runtime.session.agent_state == "speaking"
        if span is not None and not speaking and len(samples) / rate - (since_s + span[1]) >= ANSWER_QUIET_S:
            return True
        await asyncio.sleep(0.1)
    return False


async def _new_room(lkapi: Any, prefix: str, seen: set[str], timeout: float) -> str:
    from livekit import api

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rooms = (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms
        fresh = [r.name for r in rooms if r.name.startswith(prefix) and r.name not in seen]
        if fresh:
            return fresh[0]
        await asyncio.sleep(0.1)
    raise RuntimeError(f"LiveKit's SIP service made no room {prefix}… within {timeout:.0f} s")


@dataclass
class PhoneConversation:
    """What the phone heard (its recording) and when it played each line, on its clock."""

    heard: np.ndarray
    heard_rate: int
    played: list[tuple[str, float, np.ndarray, int]]  # (text, start s, samples, rate)
    uncertainty_s: float
    codec: str
    notes: list[str]


async def _converse_by_phone(call: Any, runtime: Any, lines: list[SpokenLine], recording: Path) -> PhoneConversation:
    """The answered call: record, wait for the greeting, then each line and its answer."""
    notes: list[str] = []
    await asyncio.to_thread(call.expect_confirmed, 60)
    # The recording's time 0: the bridge tick after the recorder is connected.
    rec_before, rec_after, _ = await asyncio.to_thread(_timed, call.start_recording, recording)
    rec_t0 = (rec_before + rec_after) / 2
    uncertainty = (rec_after - rec_before) / 2
    if not await _wait_heard(call, runtime, 0.0, ANSWER_TIMEOUT_S):
        notes.append("the greeting was not heard")
    played: list[tuple[str, float, np.ndarray, int]] = []
    for line in lines:
        await asyncio.sleep(0.3)
        before, after, _ = await asyncio.to_thread(_timed, call.play, line.wav)
        start = (before + after) / 2 - rec_t0
        uncertainty = max(uncertainty, (after - before) / 2 + (rec_after - rec_before) / 2)
        played.append((line.text, start, line.samples, PHONE_RATE))
        await asyncio.to_thread(call.wait_played, 30)
        speech = loud_span(line.samples, PHONE_RATE)
        spoken_until = start + (speech[1] if speech else len(line.samples) / PHONE_RATE)
        if not await _wait_heard(call, runtime, spoken_until, ANSWER_TIMEOUT_S):
            notes.append(f"no answer heard to {line.text!r}")
    await asyncio.sleep(0.5)  # let the last assistant message commit
    heard, rate = await asyncio.to_thread(call.received_audio)  # closes the recording
    return PhoneConversation(heard, rate, played, uncertainty, call.codec or "", notes)


async def run_phone(
    server: livekit_dev.ServerConfig,
    sip: livekit_dev.SipConfig,
    line_id: int,
    address: str,
    lines: list[SpokenLine],
    recording: Path,
    seen_rooms: set[str],
) -> CallResult:
    """One phone call through livekit-sip: the agent joins the call's room as its dispatched
    job would, the phone waits for the greeting, then says each line and waits until the
    answer has been heard; the recording is measured afterwards (`replay_heard`)."""
    from asgiref.sync import sync_to_async
    from livekit import api, rtc
    from livekit.agents.testing import fake_job_context
    from livekit.agents.utils import http_context

    from agents_app.runtime.simulator.sip_phone import SipPhone
    from agents_app.runtime.worker.config import load_job_config
    from agents_app.runtime.worker.entrypoint import JobRuntime
    from agents_app.runtime.worker.job_session import open_phone_session
    from bench.livekit_calls import _agent_token
    from sessions_app.livekit_server import PHONE_LINE_METADATA_KEY

    lkapi = api.LiveKitAPI(url=f"http://127.0.0.1:{server.port}", api_key=server.api_key, api_secret=server.api_secret)
    phone = await asyncio.to_thread(SipPhone, bind=address, user=CALLER_NUMBER)
    agent_room = rtc.Room()
    room = ""
    call: Any = None
    try:
        call = await asyncio.to_thread(phone.call, f"sip:{LINE_NUMBER}@{address}:{sip.sip_port}")
        room = await _new_room(lkapi, f"phone-{line_id}-", seen_rooms, 20)
        seen_rooms.add(room)
        await agent_room.connect(server.url, _agent_token(server, room, f"agent-bench-{secrets.token_hex(4)}"))
        metadata = json.dumps({PHONE_LINE_METADATA_KEY: line_id})
        # The job's LiveKit API client (phone call controls) needs the http context a worker sets up.
        async with http_context.open():
            with fake_job_context(room=agent_room, job_id="bench-phone-heard-phone", job_metadata=metadata) as ctx:
                session_id = await open_phone_session(ctx, line_id)
                if session_id is None:
                    raise RuntimeError(f"no phone session was opened for room {room}")
                config = await load_job_config(session_id)
                runtime = JobRuntime(ctx=ctx, config=config, call=None)
                if not await runtime.start():
                    raise RuntimeError(f"the platform's job would not serve phone session {session_id}")
                try:
                    spoken = await _converse_by_phone(call, runtime, lines, recording)
                    await asyncio.to_thread(call.hangup)
                    await asyncio.to_thread(call.wait_disconnected, 10)
                finally:
                    await runtime.aclose()
    finally:
        if call is not None and not call.is_disconnected:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(call.hangup)
        await asyncio.to_thread(phone.close)
        await agent_room.disconnect()
        if room:
            with contextlib.suppress(Exception):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
        await lkapi.aclose()
    turns = await sync_to_async(stored_turns)(session_id)
    return CallResult(
        measurements=replay_heard(spoken.heard, spoken.heard_rate, spoken.played),
        turns=turns,
        codec=spoken.codec,
        clock_uncertainty_ms=round(spoken.uncertainty_s * 1000.0, 1),
        notes=spoken.notes,
    )


# --- the run ----------------------------------------------------------------------------------


async def main(
    rounds: int,
    turns: int,
    grammar: bool,
    server: livekit_dev.ServerConfig,
    sip: livekit_dev.SipConfig,
    address: str,
    work_dir: Path,
) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from agents_app.runtime.simulator import sip_phone
    from bench.voice_calls import prepare, setup_session

    # A carrier's narrowband telephone audio (LiveKit's SIP service prefers G.722 when offered).
    sip_phone.configure(codecs=("PCMU/8000", "PCMA/8000"), log_path=work_dir / "pjsua2.log")
    progress("migrating, loading the offline models, synthesizing the caller's lines")
    utterances = await prepare(turns)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(turns)]
    lines = await asyncio.to_thread(phone_lines, utterances, texts, work_dir)
    phrases = list(SENTENCES) if grammar else None
    pending: tuple[str, Any] | None = await sync_to_async(setup_session)(AGENT_SLUG, phrases)
    line_id = await sync_to_async(setup_line)(pending[1], address)
    progress(f"phone line {LINE_NUMBER} applied to the SIP service (sip port {sip.sip_port}, {address})")
    webrtc: list[CallResult] = []
    phone: list[CallResult] = []
    seen_rooms: set[str] = set()
    try:
        for n in range(rounds):
            for side in ("webrtc", "phone") if n % 2 == 0 else ("phone", "webrtc"):  # alternate who goes first
                t0 = time.monotonic()
                if side == "webrtc":
                    if pending is None:
                        pending = await sync_to_async(setup_session)(AGENT_SLUG, phrases)
                    session_id, pending = pending[0], None
                    room = f"bench-phone-heard-{n}-{session_id[:8]}"
                    result = await run_webrtc(server, session_id, utterances, room)
                    webrtc.append(result)
                else:
                    recording = work_dir / f"phone-heard-{n}.wav"
                    result = await run_phone(server, sip, line_id, address, lines, recording, seen_rooms)
                    phone.append(result)
                gaps = [m["heard_gap_ms"] for m in result.measurements]
                progress(
                    f"round {n + 1}/{rounds} {side}: heard {gaps} ms, agent e2e "
                    f"{[t.get('e2e_ms') for t in result.turns if t.get('user_text')]} ms "
                    f"({time.monotonic() - t0:.0f} s){' ' + '; '.join(result.notes) if result.notes else ''}"
                )
    finally:
        await sync_to_async(remove_line)(line_id)
    webrtc_summary, phone_summary = summarize(webrtc), summarize(phone)
    phone_summary["codec"] = sorted({c.codec for c in phone if c.codec})
    uncertainties = [c.clock_uncertainty_ms for c in phone if c.clock_uncertainty_ms is not None]
    phone_summary["clock_uncertainty_ms"] = max(uncertainties) if uncertainties else None
    notes = [note for c in phone for note in c.notes]
    return {
        "name": NAME,
        "transport": "livekit (webrtc) vs livekit-sip (G.711 phone)",
        "stt": "phrase grammar" if grammar else "open vocabulary",
        "rounds": rounds,
        "turns_per_call": turns,
        "webrtc": webrtc_summary,
        "phone": phone_summary,
        **compare(webrtc_summary, phone_summary),
        **({"notes": notes} if notes else {}),
    }


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def inside(args: argparse.Namespace) -> int:
    """In the namespace: Redis, the server, the SIP service, then the calls; everything the
    run started is stopped again whatever happens. Stdout carries only the JSON line."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr
    sys.stdout = sys.stderr
    # The outer run stops this one with SIGINT, even where SIGINT was ignored (started in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    data_dir = Path(os.environ["DATA_DIR"])
    address = os.environ[netns.ADDRESS_ENV]
    code, result = 0, {}
    try:
        with contextlib.ExitStack() as stack:
            from bench.livekit_calls import livekit_server
            from voiceplatform import embedded_redis

            redis_url = embedded_redis.ensure_running(data_dir)
            stack.callback(embedded_redis.stop, data_dir)
            server = stack.enter_context(livekit_server(redis=livekit_dev.redis_config(redis_url)))
            sip = stack.enter_context(sip_service(server, data_dir))
            progress(f"livekit-server on :{server.port}, livekit-sip on udp :{sip.sip_port}, in {address}")
            os.environ.update(livekit_dev.platform_env(server))  # the platform mints the caller's token
            import django

            django.setup()
            from agents_app.runtime.providers.factory import shutdown_offline

            stack.callback(shutdown_offline)  # the STT's process pool
            work_dir = data_dir / "work"
            work_dir.mkdir(parents=True, exist_ok=True)
            result = asyncio.run(
                main(args.rounds, args.turns, not args.open_vocabulary, server, sip, address, work_dir)
            )
    except KeyboardInterrupt:
        code, result = 130, {"name": NAME, "error": "interrupted"}
    except Exception as exc:
        traceback.print_exc()
        code, result = 1, {"name": NAME, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    result["seconds"] = round(time.monotonic() - _STARTED, 1)
    out.write(json.dumps(result) + "\n")
    out.flush()
    sys.stderr.flush()
    # Not a normal interpreter exit: the livekit rtc runtime has aborted at exit (a Rust
    # panic, tests/livekit/conftest.py) and pjsua2's atexit hook adds nothing now.
    os._exit(code)


def missing() -> str:
    """Why this benchmark cannot run here ('' when it can)."""
    if livekit_dev.server_binary() is None:
        return "no livekit-server (`make livekit-server` builds it; it needs Go)"
    if livekit_dev.sip_binary() is None:
        return "no livekit-sip (`make livekit-sip` builds LiveKit's SIP service: Go, libopus-dev, libsoxr-dev)"
    if importlib.util.find_spec("pjsua2") is None:
        return "no pjsua2 (the test phone: `pjsua2-python` from requirements-dev.txt)"
    try:
        import pjsua2  # noqa: F401
    except Exception as exc:  # the wheel's native library would not load
        return f"pjsua2 does not load: {exc}"
    return netns.missing()


def outside(args: argparse.Namespace, argv: list[str]) -> int:
    """Make the namespace and a temporary DATA_DIR, run this script again inside, and remove
    both afterwards (the namespace's removal kills anything the inner run left there)."""
    reason = missing()
    if reason:
        print(f"{NAME}: {reason}", file=sys.stderr)
        print(json.dumps({"name": NAME, "error": reason}))
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    name = f"vpphone{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="vp-bench-phone-"))
    proc: subprocess.Popen[Any] | None = None
    try:
        try:
            address = netns.make_namespace(name, 20 + os.getpid() % 200)
        except RuntimeError as exc:
            print(f"{NAME}: no network namespace: {exc}", file=sys.stderr)
            print(json.dumps({"name": NAME, "error": f"no network namespace: {exc}"}))
            return 2
        progress(f"network namespace {name} ({address}), data in {data_dir}")
        env = netns.namespace_env(dict(os.environ), address)
        env["DATA_DIR"] = str(data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        command = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), *argv]
        # A session of its own: a Ctrl-C reaches this process only, which passes on one SIGINT.
        proc = subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            progress(f"still running after {args.timeout:.0f} s: stopping it")
            return 1
    except KeyboardInterrupt:
        progress("interrupted: stopping the run")
        return 130
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # its own clean-up first (it prints the JSON line)
            try:
                proc.wait(INNER_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
                print(json.dumps({"name": NAME, "error": "killed: its clean-up did not end in time"}))
        netns.remove_namespace(name)  # kills what is left inside: servers, Redis, job processes
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":  # the PocketSphinx pool spawns processes: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="calls per caller (default 2)")
    parser.add_argument("--turns", type=int, default=3, help="caller lines per call (default 3)")
    parser.add_argument(
        "--open-vocabulary",
        action="store_true",
        help="Moonshine (open vocabulary) instead of PocketSphinx with the caller's lines as its grammar",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before the run is stopped")
    args = parser.parse_args()
    if args.rounds < 1 or args.turns < 1:
        parser.error("--rounds and --turns must be at least 1")
    if os.environ.get(netns.ADDRESS_ENV):
        inside(args)
    else:
        sys.exit(outside(args, sys.argv[1:]))
