"""Real calls through the local transport: Silero VAD, Moonshine, Piper, real time.

The caller speaks with Piper, the agent hears it through the VAD and Moonshine, the
offline stand-in LLM answers, Piper speaks, and the local playout clock plays it.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from sessions_app import broadcast
from tests.pipeline.conftest import (
    LONG_REQUEST,
    CallDriver,
    db,
    event_types,
    make_session,
    session_row,
    turns_of,
    wait_turns,
    wait_until,
)

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def _norm(text: str) -> str:
    return " ".join(text.split())


def job_started_payload(session_id: str) -> dict:
    from sessions_app.models import SessionEvent

    return SessionEvent.objects.filter(session_id=session_id, type="agent.job_started").values_list(
        "payload", flat=True
    )[0]


@pytest.fixture
def stand_in_llm(monkeypatch):
    """The job's LLM, kept so tests can see every request the model received."""
    from agents_app.runtime.providers import factory
    from agents_app.runtime.providers.offline_llm import OfflineStandInLLM

    llm = OfflineStandInLLM()
    build = factory.build_provider
    monkeypatch.setattr(
        factory, "build_provider", lambda stage, spec, agent: llm if stage == "llm" else build(stage, spec, agent)
    )
    return llm


def _assistant_texts(llm) -> list[str]:
    from livekit.agents.llm import ChatMessage

    return [
        i.text_content or "" for i in llm.requests[-1].items if isinstance(i, ChatMessage) and i.role == "assistant"
    ]


def _user_texts(llm) -> list[str]:
    from livekit.agents.llm import ChatMessage

    return [i.text_content or "" for i in llm.requests[-1].items if isinstance(i, ChatMessage) and i.role == "user"]


async def test_it_runs_a_three_turn_call_and_records_every_turn(agent, prewarmed, stand_in_llm):
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)

    for count, sentence in enumerate(
        ("I would like to place an order for two pizzas.", "What time do you open tomorrow?", "Thank you very much."),
        start=2,
    ):
        await driver.say(sentence)
        await wait_turns(session_id, count)
        await driver.wait_speaking(False)
    await driver.hangup()

    turns = await db(turns_of, session_id)
    assert [t["index"] for t in turns] == [0, 1, 2, 3]
    greeting = turns[0]
    assert greeting["user_text"] == "" and "Acme" in greeting["generated_text"]
    assert "order" in turns[1]["user_text"] and "pizza" in turns[1]["user_text"]
    for turn in turns[1:]:
        assert turn["user_text"], turn
        assert not turn["interrupted"], turn
        assert "Acme" in turn["generated_text"]  # the stand-in names the prompt's company
        assert turn["heard_text"] == turn["generated_text"]
        for stage in ("eou", "stt", "llm_ttft", "tts_ttfb", "ttfa", "e2e"):
            assert turn[f"{stage}_ms"] is not None and turn[f"{stage}_ms"] >= 0, (stage, turn)
        assert turn["ttfa_ms"] >= turn["eou_ms"]
    session = await db(session_row, session_id)
    assert session.turn_count == 4 and session.interrupt_count == 0
    assert session.last_e2e_ms == turns[3]["e2e_ms"]
    assert session.last_heartbeat_at is not None
    types = await db(event_types, session_id)
    assert types[0] == "agent.job_started" and types.count("turn.completed") == 4
    started = await db(job_started_payload, session_id)
    # Which worker, host and process served the call (docs/deploy.md: several hosts).
    assert started["worker_id"] and started["host"] and started["pid"] > 0, started
    assert driver.played_seconds > 3


async def test_it_stores_only_the_heard_text_of_a_barged_in_reply(agent, prewarmed, stand_in_llm):
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)

    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=40)
    await asyncio.sleep(2.5)
    await driver.say("wait a moment please I have a question")
    turns = await wait_turns(session_id, 3, timeout=60)
    await driver.wait_speaking(False, timeout=40)
    await driver.hangup()

    cut = turns[1]
    assert cut["interrupted"] and cut["interrupt_source"] == "vad"
    heard, generated = _norm(cut["heard_text"]), _norm(cut["generated_text"])
    assert heard and generated.startswith(heard) and len(heard) < len(generated)
    assert "Finally" in generated and "Finally" not in heard

    # The request that answered the interruption saw only what the caller heard.
    assistant = _assistant_texts(stand_in_llm)
    assert any(_norm(a) == heard for a in assistant), assistant
    assert not any("Finally" in a for a in assistant)
    session = await db(session_row, session_id)
    assert session.interrupt_count == 1
    assert "agent.speech_interrupted" in await db(event_types, session_id)


async def test_it_cuts_the_reply_on_a_client_interrupt(agent, prewarmed, stand_in_llm):
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)

    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=40)
    await asyncio.sleep(2.0)
    await get_channel_layer().group_send(
        broadcast.agent_control_group(session_id),
        {"type": "agent.interrupt", "session_id": session_id, "source": "client", "event_seq": 0},
    )
    await driver.wait_speaking(False, timeout=10)
    turns = await wait_turns(session_id, 2)
    await driver.hangup()

    cut = turns[1]
    assert cut["interrupted"] and cut["interrupt_source"] == "client"
    assert _norm(cut["generated_text"]).startswith(_norm(cut["heard_text"]))
    assert len(cut["heard_text"]) < len(cut["generated_text"])
    assert driver.played_seconds < 20  # the long answer is ~25 s of speech


async def test_it_resumes_after_a_reconnect_and_an_agent_crash_without_greeting_again(agent, prewarmed, stand_in_llm):
    session_id = await db(make_session, agent)
    first = await CallDriver(session_id).start()
    await first.wait_speaking(True)
    await first.wait_speaking(False)
    await first.say("I would like to place an order for two pizzas.")
    await wait_turns(session_id, 2)
    await first.wait_speaking(False)
    await first.hangup()  # the caller drops; a new job serves the reconnect

    second = await CallDriver(session_id).start()
    await asyncio.sleep(2.0)
    assert second.played_seconds == 0  # no second greeting
    await second.say(LONG_REQUEST)
    await second.wait_speaking(True, timeout=40)
    assert any("pizza" in u for u in _user_texts(stand_in_llm))  # earlier facts are known
    assert any("Acme support" in a for a in _assistant_texts(stand_in_llm))
    await asyncio.sleep(1.0)
    await second.kill()  # the agent process crashes mid-reply

    third = await CallDriver(session_id).start()
    await asyncio.sleep(2.0)
    assert third.played_seconds == 0
    await third.say("What time do you open tomorrow?")
    await wait_until(lambda: any("open" in t["user_text"] for t in turns_of(session_id)), timeout=40)
    await third.wait_speaking(False, timeout=30)
    await third.hangup()

    users = _user_texts(stand_in_llm)
    assert any("pizza" in u for u in users) and "open" in users[-1]
    turns = await db(turns_of, session_id)
    assert [t["index"] for t in turns] == list(range(len(turns)))
    assert sum(1 for t in turns if t["user_text"] == "") == 1  # one greeting in the whole call
    types = await db(event_types, session_id)
    assert types.count("agent.job_started") == 3


async def test_it_ends_the_job_and_the_session_on_agent_end(agent, prewarmed, stand_in_llm):
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await get_channel_layer().group_send(
        broadcast.agent_control_group(session_id),
        {"type": "agent.end", "session_id": session_id, "reason": "ended by support"},
    )
    await asyncio.wait_for(driver.task, 30)  # the job returns on its own
    session = await db(session_row, session_id)
    assert session.state == "ended" and session.end_reason == "ended by support"
    turns = await db(turns_of, session_id)
    assert len(turns) == 1 and turns[0]["interrupted"]  # the greeting was cut by the end


async def test_an_end_whose_message_was_lost_reaches_the_job_through_its_heartbeat(
    agent, prewarmed, stand_in_llm, monkeypatch, settings
):
    """Support ends the call while Redis is down: the session is ended in the database, but
    the `agent.end` sent to the job is lost. The job's next heartbeat finds the session
    final and ends the call."""
    from sessions_app import services

    settings.AGENT_HEARTBEAT_SECONDS = 0.5
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    lost = []
    monkeypatch.setattr(broadcast, "publish", lambda groups, message: lost.append(message))
    await db(lambda: services.session_end(session_id=session_id, reason="ended by support"))
    assert [m["type"] for m in lost] == ["agent.end"]  # the job was never told
    await asyncio.wait_for(driver.task, 30)  # the job returns on its own
    session = await db(session_row, session_id)
    assert session.state == "ended" and session.end_reason == "ended by support"
    turns = await db(turns_of, session_id)
    assert len(turns) == 1 and turns[0]["interrupted"]  # the greeting was cut by the end
