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


async def test_a_heartbeat_tells_the_job_once_when_its_session_is_final(agent):
    session_id = await db(_session, agent)
    recorder = Recorder(session_id=session_id, maxsize=100)
    told: list[tuple[str, str]] = []
    recorder.on_session_final = lambda state, reason: told.append((state, reason))
    recorder.start()
    recorder.heartbeat()
    await recorder.drain()
    await asyncio.sleep(0.05)
    assert told == []  # a live session: only the heartbeat is written
    before = await db(lambda: VoiceSession.objects.get(pk=session_id).last_heartbeat_at)
    await db(lambda: VoiceSession.objects.filter(pk=session_id).update(state="ended", end_reason="ended by support"))
    for _ in range(2):
        recorder.heartbeat()
        await recorder.drain()
        await asyncio.sleep(0.05)
    assert told == [("ended", "ended by support")]
    assert await db(lambda: VoiceSession.objects.get(pk=session_id).last_heartbeat_at) == before
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


# -- a database outage (docs/reliability.md) -------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch):
    from agents_app.runtime.worker import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "RETRY_FIRST_DELAY", 0.01)
    monkeypatch.setattr(recorder_module, "RETRY_MAX_DELAY", 0.02)


def _stored(session_id):
    turns = list(Turn.objects.filter(session_id=session_id).order_by("index").values_list("index", flat=True))
    events = list(SessionEvent.objects.filter(session_id=session_id).order_by("seq").values_list("type", flat=True))
    return turns, events


async def test_it_retries_while_the_database_is_down_and_keeps_the_order(agent, monkeypatch, fast_retries):
    from django.db import OperationalError

    from sessions_app import turns as turns_module

    session_id = await db(_session, agent)
    real = turns_module.turn_record
    outage = {"left": 4}

    def flaky(*, session_id, data):
        if data["index"] == 1 and outage["left"]:
            outage["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return real(session_id=session_id, data=data)

    monkeypatch.setattr(turns_module, "turn_record", flaky)
    recorder = Recorder(session_id=session_id, maxsize=100)
    recorder.start()
    recorder.record_turn({"index": 0})
    recorder.record_event("marker.a")
    recorder.record_turn({"index": 1})  # fails four times
    recorder.record_event("marker.b")  # must wait behind it
    recorder.record_turn({"index": 2})
    await recorder.aclose(timeout=30)

    turns, events = await db(_stored, session_id)
    assert turns == [0, 1, 2] and recorder.errors == []
    assert recorder.retries == 4
    assert [t["index"] for t in recorder.turns_written] == [0, 1, 2]
    # turn_record appends turn.completed: the order of the timeline is the order recorded
    assert [e for e in events if e != "turn.completed"] == ["marker.a", "marker.b"]
    assert events.index("marker.b") > events.index("marker.a") + 1  # turn 1's event came between


async def test_a_retry_after_a_lost_commit_answer_stores_nothing_twice(agent, monkeypatch, fast_retries):
    from django.db import InterfaceError

    from sessions_app import turns as turns_module

    session_id = await db(_session, agent)
    real_turn = turns_module.turn_record
    lost = {"turn": True, "event": True}

    def commit_then_lose_answer(*, session_id, data):
        turn = real_turn(session_id=session_id, data=data)  # committed
        if lost["turn"]:
            lost["turn"] = False
            raise InterfaceError("connection already closed")
        return turn

    monkeypatch.setattr(turns_module, "turn_record", commit_then_lose_answer)
    recorder = Recorder(session_id=session_id, maxsize=100)
    real_event = recorder._write_event

    def event_then_lose_answer(data):
        real_event(data)  # committed
        if lost["event"]:
            lost["event"] = False
            raise InterfaceError("connection already closed")

    monkeypatch.setattr(recorder, "_write_event", event_then_lose_answer)
    recorder.start()
    recorder.record_turn({"index": 0})
    recorder.record_event("marker.a")
    await recorder.aclose(timeout=30)

    turns, events = await db(_stored, session_id)
    assert recorder.retries == 2
    assert turns == [0]
    assert events.count("turn.completed") == 1 and events.count("marker.a") == 1


async def test_errors_other_than_an_unreachable_database_are_not_retried(agent, monkeypatch, fast_retries):
    from sessions_app import turns as turns_module

    session_id = await db(_session, agent)

    def broken(*, session_id, data):
        raise ValueError("bad record")

    monkeypatch.setattr(turns_module, "turn_record", broken)
    recorder = Recorder(session_id=session_id, maxsize=100)
    recorder.start()
    recorder.record_turn({"index": 0})
    recorder.record_event("marker.a")
    await recorder.aclose(timeout=30)
    assert recorder.retries == 0 and len(recorder.errors) == 1
    assert (await db(_stored, session_id))[1] == ["marker.a"]


async def test_it_gives_up_after_the_retry_window(agent, monkeypatch, fast_retries):
    from django.db import OperationalError

    from sessions_app import turns as turns_module

    session_id = await db(_session, agent)

    def down(*, session_id, data):
        raise OperationalError("connection refused")

    monkeypatch.setattr(turns_module, "turn_record", down)
    recorder = Recorder(session_id=session_id, maxsize=100, retry_seconds=0.2)
    recorder.start()
    recorder.record_turn({"index": 0})
    recorder.record_event("marker.a")
    await recorder.aclose(timeout=30)
    assert recorder.retries > 1 and len(recorder.errors) == 1  # the turn, after the window
    assert (await db(_stored, session_id))[1] == ["marker.a"]  # the next record was written
