"""The job's bounded recorder queue and batching writer."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from agents_app.runtime.worker.recorder import Recorder
from sessions_app.models import SessionEvent, Turn, VoiceSession
from tests.factories import make_voice_session
from tests.pipeline.conftest import db

pytestmark = pytest.mark.django_db(transaction=True)


def _session(agent) -> str:
    return str(make_voice_session(agent, caller_id="c1").id)


async def test_it_never_drops_turns_when_the_queue_is_full(agent):
    session_id = await db(_session, agent)
    dropped_before = REGISTRY.get_sample_value("voice_dashboard_events_dropped_total", {"reason": "recorder_full"}) or 0
    recorder = Recorder(session_id=session_id, maxsize=10)
    # Fill far past the bound before the writer runs: the loop is never blocked.
    for index in range(25):
        recorder.record_turn({"index": index, "user_text": f"u{index}"})
        recorder.heartbeat()  # dashboard-only: may be dropped
    assert recorder.overflowed > 0 and recorder.dropped > 0
    recorder.start()
    await recorder.aclose(timeout=30)

    stored = await db(lambda: list(Turn.objects.filter(session_id=session_id).values_list("index", flat=True)))
    assert sorted(stored) == list(range(25))
    assert [t["index"] for t in recorder.turns_written] == list(range(25))  # in order
    dropped_after = REGISTRY.get_sample_value("voice_dashboard_events_dropped_total", {"reason": "recorder_full"})
    assert dropped_after == dropped_before + recorder.dropped


async def test_it_writes_events_and_heartbeats_in_batches(agent):
    session_id = await db(_session, agent)
    recorder = Recorder(session_id=session_id, maxsize=100)
    recorder.start()
    recorder.record_event("agent.job_started", {"job_id": "j1"})
    recorder.heartbeat()
    recorder.record_event("tool.called", {"name": "place_order", "status": "ok", "replayed": False, "latency_ms": 3})
    await recorder.drain()
    events = await db(lambda: list(SessionEvent.objects.filter(session_id=session_id).values_list("type", flat=True)))
    assert events == ["agent.job_started", "tool.called"]
    heartbeat = await db(lambda: VoiceSession.objects.get(pk=session_id).last_heartbeat_at)
    assert heartbeat is not None
    await recorder.aclose()


async def test_recording_returns_at_once_while_the_writer_is_busy(agent, monkeypatch):
    session_id = await db(_session, agent)
    recorder = Recorder(session_id=session_id, maxsize=10)
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_batch(batch):
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()  # the DB "hangs"
        return []

    monkeypatch.setattr(recorder, "_write_batch", slow_batch)
    recorder.start()
    recorder.record_turn({"index": 0})
    await asyncio.sleep(0.05)
    for index in range(1, 40):  # the writer is stuck; the loop is not
        recorder.record_turn({"index": index})
    assert recorder.pending == 39
    gate.set()
    await recorder.aclose(timeout=10)
    assert recorder.pending == 0


async def test_an_aborted_recorder_writes_nothing_more(agent):
    session_id = await db(_session, agent)
    recorder = Recorder(session_id=session_id, maxsize=10)
    recorder.record_turn({"index": 0})
    recorder.abort()  # a crash before the writer ran
    await asyncio.sleep(0.1)
    assert await db(lambda: Turn.objects.filter(session_id=session_id).count()) == 0
