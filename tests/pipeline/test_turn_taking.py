"""Turn-taking in real calls (issue 28): semantic end of turn and backchannels.

Local transport, Silero VAD, the agent's default STT, Smart Turn, the offline stand-in LLM
and Piper, in real time. Each behaviour is also shown failing with the setting off, so
the test proves the setting does it.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.pipeline.conftest import LONG_REQUEST, CallDriver, db, event_types, make_session, turns_of, wait_turns

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

# The pause after "my": both the audio (Smart Turn: ~0.2) and the words ("… change my")
# say unfinished. A pause after a complete phrase with final-sounding intonation is the
# model's call (docs/pipeline.md), not tested here.
PAUSED_LINE = "I need to change my ... delivery address please."


def _configure(agent, **fields) -> None:
    for name, value in fields.items():
        setattr(agent, name, value)
    agent.save(update_fields=list(fields))


def _events(session_id: str) -> list[tuple[str, dict]]:
    from sessions_app.models import SessionEvent

    return [(e.type, e.payload) for e in SessionEvent.objects.filter(session_id=session_id).order_by("seq")]


def _caller_turns(session_id: str) -> list[dict]:
    return [t for t in turns_of(session_id) if t["user_text"]]


async def _say_with_pause(driver: CallDriver, text: str, pause: float) -> None:
    from agents_app.runtime.providers import piper

    audio, rate, _ = await asyncio.to_thread(piper.synthesize_with_pause, text, pause)
    driver.call.push_caller_audio(audio, rate)


async def _greeted(agent) -> tuple[str, CallDriver]:
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)
    return session_id, driver


@pytest.mark.parametrize("detection", ["smart_turn", "vad"])
async def test_a_caller_pausing_mid_sentence_is_answered_once(agent, prewarmed, detection):
    await db(_configure, agent, turn_detection=detection)
    session_id, driver = await _greeted(agent)

    await _say_with_pause(driver, PAUSED_LINE, 0.7)
    await wait_turns(session_id, 2, timeout=40)
    await driver.wait_speaking(False, timeout=40)
    await asyncio.sleep(1.0)  # a split would have stored its second half by now
    predictions = getattr(driver.call.job.turn_detector, "predictions", None)
    await driver.hangup()

    caller = await db(_caller_turns, session_id)
    words = " ".join(t["user_text"] for t in caller).lower()
    assert "change" in words and "please" in words, (caller, predictions)
    if detection == "smart_turn":
        assert len(caller) == 1, (caller, predictions)  # both halves, one answer
    else:
        assert len(caller) == 2, caller  # silence alone answers the first half


@pytest.mark.parametrize("ignore", [True, False])
async def test_a_backchannel_over_the_agent_neither_cuts_it_nor_becomes_a_turn(agent, prewarmed, ignore):
    await db(_configure, agent, ignore_backchannels=ignore)
    session_id, driver = await _greeted(agent)

    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=40)
    await asyncio.sleep(1.0)
    await driver.say("Yeah.")
    await driver.wait_speaking(False, timeout=60)
    await asyncio.sleep(1.0)
    await driver.hangup()

    turns = await db(turns_of, session_id)
    reply = turns[1]
    story = await db(_events, session_id)  # printed when an assertion fails
    events = [kind for kind, _ in story]
    if ignore:
        assert not reply["interrupted"] and reply["heard_text"] == reply["generated_text"], (turns, story)
        assert [t["user_text"] for t in turns if t["user_text"]] == [turns[1]["user_text"]], (turns, story)
        assert "caller.backchannel" in events
    else:
        assert reply["interrupted"], reply  # "yeah" is a turn of its own and cuts the reply
        assert "caller.backchannel" not in events


async def test_a_short_real_interruption_still_cuts_the_agent(agent, prewarmed):
    session_id, driver = await _greeted(agent)

    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=40)
    await asyncio.sleep(1.0)
    await driver.say("Stop.")
    turns = await wait_turns(session_id, 3, timeout=60)
    await driver.wait_speaking(False, timeout=40)
    await driver.hangup()

    cut = turns[1]
    assert cut["interrupted"], cut
    assert len(cut["heard_text"]) < len(cut["generated_text"])
    assert "stop" in turns[2]["user_text"].lower(), turns[2]
    assert "caller.backchannel" not in await db(event_types, session_id)
