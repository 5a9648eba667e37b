"""Network impairment of the caller's audio (issue 11): 40 ms jitter and 3% frame loss.

The real pipeline (Silero VAD, Moonshine STT, offline LLM stand-in, Piper TTS) over
the local transport with `LocalCall.impairment` set: the call completes, a barge-in still
cuts the reply, and the impairment really dropped and delayed frames.
"""

from __future__ import annotations

import asyncio

import pytest

from agents_app.runtime.simulator import scenarios
from agents_app.runtime.worker.impairment import Impairment
from sessions_app.models import SessionEvent
from tests.pipeline.conftest import LONG_REQUEST, CallDriver, db, make_session, wait_turns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def _plan(impairment: Impairment, frames: int) -> list[tuple[bool, float]]:
    return [impairment.plan(i * 0.02) for i in range(frames)]


def test_the_same_seed_gives_the_same_losses_and_delays():
    first = _plan(Impairment(jitter_ms=40, loss=0.03, seed=5), 2000)
    again = _plan(Impairment(jitter_ms=40, loss=0.03, seed=5), 2000)
    other = _plan(Impairment(jitter_ms=40, loss=0.03, seed=6), 2000)
    assert first == again and first != other


def test_it_drops_about_the_configured_share_and_keeps_frame_order():
    impairment = Impairment(jitter_ms=40, loss=0.03, seed=1)
    plan = _plan(impairment, 5000)
    summary = impairment.summary()
    assert 0.02 < summary["loss_observed"] < 0.04
    deliveries = [at for _, at in plan]
    assert deliveries == sorted(deliveries), "a jitter buffer keeps the order"
    lateness = [at - i * 0.02 for i, at in enumerate(deliveries)]
    assert min(lateness) >= 0 and max(lateness) <= 0.040 + 1e-9
    assert summary["mean_delay_ms"] > 5


def test_bursts_lose_consecutive_frames():
    impairment = Impairment(burst_probability=0.01, burst_frames=5, seed=2)
    lost = [lost for lost, _ in _plan(impairment, 3000)]
    assert impairment.stats["bursts"] > 0
    runs, run = [], 0
    for flag in lost:
        run = run + 1 if flag else 0
        runs.append(run)
    assert max(runs) >= 5


def test_it_rejects_impossible_settings():
    with pytest.raises(ValueError):
        Impairment(loss=1.5)
    with pytest.raises(ValueError):
        Impairment.from_config({"jitter": 40})
    assert Impairment.from_config({}) is None


def test_the_jitter_scenario_asks_for_40ms_and_3_percent_and_bad_settings_are_rejected():
    jitter = scenarios.load("jitter")
    assert Impairment.from_config(jitter.impairment).summary()["jitter_ms"] == 40
    assert jitter.impairment["loss"] == 0.03
    with pytest.raises(scenarios.ScenarioError, match="impairment"):
        scenarios.parse({"name": "x", "steps": [{"end": {}}], "impairment": {"loss": 2}})


async def test_the_local_host_applies_the_impairment_a_session_asked_for(agent):
    from agents_app.runtime.worker.impairment import impairment_from_session

    plain = await db(make_session, agent)
    impaired = await db(make_session, agent, network_impairment={"jitter_ms": 40, "loss": 0.03, "seed": 3})
    assert await impairment_from_session(plain) is None
    applied = await impairment_from_session(impaired)
    assert applied is not None and applied.jitter_ms == 40 and applied.loss == 0.03


async def test_a_call_completes_under_40ms_jitter_and_3_percent_loss(agent, prewarmed):
    session_id = await db(make_session, agent)
    driver = CallDriver(session_id)
    driver.call.impairment = Impairment(jitter_ms=40, loss=0.03, seed=11)
    await driver.start()
    await driver.wait_speaking(True)  # the greeting
    await driver.wait_speaking(False)

    await driver.say("hello I would like to check my order")
    turns = await wait_turns(session_id, 2, timeout=60)
    answered = turns[1]
    assert answered["user_text"] and answered["heard_text"] and not answered["error"]
    assert not answered["interrupted"]
    await driver.wait_speaking(False, timeout=40)

    # Barge-in still works: speak over a long reply.
    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=40)
    await asyncio.sleep(2.5)
    await driver.say("wait a moment please I have a question")
    turns = await wait_turns(session_id, 4, timeout=60)
    await driver.wait_speaking(False, timeout=40)
    await driver.hangup()

    assert turns[2]["interrupted"] and turns[2]["interrupt_source"] == "vad"
    assert turns[3]["user_text"]
    summary = driver.call.impairment.summary()
    assert summary["lost"] > 0 and summary["max_delay_ms"] > 20
    # The job stored what the network did to the call, for the timeline and the simulator.
    stored = await db(
        lambda: list(
            SessionEvent.objects.filter(session_id=session_id, type="network.impairment").values_list(
                "payload", flat=True
            )
        )
    )
    assert stored and stored[0]["lost"] > 0 and stored[0]["jitter_ms"] == 40
    print("JITTER", summary, [(t["index"], t.get("eou_ms"), t.get("stt_ms"), t.get("e2e_ms")) for t in turns])
