"""A call's life over a real LiveKit server, driven by in-process callers (livekit rtc SDK).

Clean leave and rejoin, a caller who never comes back, the interrupt RPC, typed text (only
where the agent takes it), a barge-in whose
next LLM request holds only the heard text, the agent worker killed mid-call, and the
server's own signed webhooks replayed.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.livekit.conftest import (
    DEPARTURE_TIMEOUT_S,
    RECORDED_AGENT,
    TYPED_AGENT,
    LiveKitPlatform,
    RecordingLLM,
    WebhookTap,
)

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(300)]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _agents(lk: LiveKitPlatform, session_id: str) -> list[str]:
    return [p["identity"] for _, kind, p in lk.events(session_id) if kind == "agent.joined" and not p.get("late")]


async def test_a_caller_who_leaves_and_rejoins_finds_the_same_agent_job(caller, lk: LiveKitPlatform) -> None:
    call = caller()
    await call.start()
    await call.agent_turn()  # the greeting
    await call.say("Hello, what are your opening hours?")
    await call.agent_turn()
    first_agent = call.transport.agent_identity

    await call.leave()  # a clean leave (CLIENT_INITIATED), e.g. the call page's Rejoin
    await call.wait_detail(lambda d: d["state"] == "reconnecting", "the session to be reconnecting")
    answer = await call.rejoin()
    assert answer["state"] == "reconnecting"
    await call.say("Do you have tea?")
    await call.agent_turn()

    detail = await call.wait_detail(lambda d: len(d["turns"]) >= 3, "three turns")
    assert call.transport.agent_identity == first_agent, call.notes
    assert detail["state"] == "active" and detail["reconnect_count"] == 1
    greetings = [t for t in detail["turns"] if not t["user_text"]]
    assert len(greetings) == 1, "the job kept the conversation: no second greeting"
    assert set(_agents(lk, call.session_id)) == {first_agent}


async def test_a_caller_who_never_comes_back_ends_the_session_when_the_room_closes(caller, lk) -> None:
    call = caller()
    await call.start()
    await call.agent_turn()
    await call.leave()
    left = time.monotonic()
    detail = await call.wait_detail(
        lambda d: d["state"] == "ended", "the session to end", timeout=DEPARTURE_TIMEOUT_S + 30
    )
    assert detail["end_reason"] == "room_finished"
    assert time.monotonic() - left >= DEPARTURE_TIMEOUT_S - 2  # not before the departure window
    kinds = [kind for _, kind, _ in lk.events(call.session_id)]
    assert "room.finished" in kinds and "agent.left" in kinds and "agent.lost" not in kinds, kinds


async def test_the_interrupt_rpc_cuts_the_agent_and_the_turn_says_client(caller) -> None:
    call = caller()
    await call.start()
    await call.agent_turn()
    await call.say("Please explain everything about your coffee menu.")
    await call.transport.wait_speaking(True, 45)
    await asyncio.sleep(1.5)
    room = call.transport.room
    reply = await room.local_participant.perform_rpc(
        destination_identity=call.transport.agent_identity, method="interrupt", payload=""
    )
    assert '"ok": true' in reply
    await call.transport.wait_speaking(False, 10)
    detail = await call.wait_detail(
        lambda d: any(t["interrupted"] for t in d["turns"]), "an interrupted turn", timeout=30
    )
    cut = next(t for t in detail["turns"] if t["interrupted"])
    assert cut["interrupt_source"] == "client"
    assert _norm(cut["generated_text"]).startswith(_norm(cut["heard_text"]))
    assert len(_norm(cut["heard_text"])) < len(_norm(cut["generated_text"]))


async def test_typed_text_is_a_turn_only_for_agents_that_take_it(caller) -> None:
    """Issue 17, item 8: lk.chat reaches the LLM only where `Agent.text_input` is on,
    and then it is the caller's stored turn (not a side channel around STT)."""
    typed = caller(TYPED_AGENT)
    await typed.start()
    await typed.agent_turn()
    await typed.transport.room.local_participant.send_text("What are your opening hours?", topic="lk.chat")
    await typed.agent_turn()
    await typed.wait_detail(
        lambda d: any(t["user_text"] == "What are your opening hours?" and t["generated_text"] for t in d["turns"]),
        "the typed message stored as an answered turn",
    )

    spoken = caller()  # the demo agent: text input off
    await spoken.start()
    await spoken.agent_turn()
    await spoken.transport.room.local_participant.send_text("Please place an order for tea.", topic="lk.chat")
    await spoken.say("Hello, what are your opening hours?")
    await spoken.agent_turn()
    detail = await spoken.wait_detail(lambda d: any(t["user_text"] for t in d["turns"]), "the spoken turn")
    assert not any(t["user_text"] == "Please place an order for tea." for t in detail["turns"]), detail["turns"]
    assert not detail.get("tool_calls") and not any(t["tool_calls"] for t in detail["turns"])


async def test_a_barge_in_keeps_only_the_heard_text_in_the_next_llm_request(
    caller, recording_llm: RecordingLLM
) -> None:
    call = caller(RECORDED_AGENT)
    await call.start()
    await call.agent_turn()
    await call.say("Please explain everything about your coffee.")
    await call.transport.wait_speaking(True, 45)
    await asyncio.sleep(3.0)
    before = len(recording_llm.requests)
    await call.say("Stop please, I have a question.")
    await call.agent_turn()

    detail = await call.wait_detail(
        lambda d: any(t["interrupted"] for t in d["turns"]) and len(d["turns"]) >= 3, "the barged-in turn"
    )
    cut = next(t for t in detail["turns"] if t["interrupted"])
    heard, generated = _norm(cut["heard_text"]), _norm(cut["generated_text"])
    assert cut["interrupt_source"] == "vad"
    assert heard and generated.startswith(heard) and len(heard) < len(generated)
    assert "Finally" in generated and "Finally" not in heard
    assert len(recording_llm.requests) > before, "the barge-in was answered by the LLM"
    # The request that answered the barge-in saw only what the caller heard.
    assistant = [_norm(a) for a in recording_llm.assistant_texts()]
    assert heard in assistant, (heard, assistant)
    assert not any("Finally" in a for a in assistant), assistant


async def test_the_agent_worker_killed_mid_call_is_replaced_and_the_call_goes_on(caller, lk: LiveKitPlatform) -> None:
    import os
    import signal

    call = caller()
    await call.start()
    await call.agent_turn()
    await call.say("Hello, what are your opening hours?")
    await call.agent_turn()
    # Turns already stored survive the crash (a turn still in the job's writer queue does
    # not: the faults-under-load work covers that).
    await call.wait_detail(lambda d: len(d["turns"]) >= 2, "two stored turns")
    first_agent = call.transport.agent_identity
    registrations = lk.registrations()

    os.killpg(lk.agent_pid(), signal.SIGKILL)  # the worker and its job processes, no goodbye
    # The demo starts the worker again (as systemd would); the platform dispatches anew when
    # the server notices the dead agent, and again if that dispatch finds no worker yet.
    assert await asyncio.to_thread(lk.wait_registered, registrations + 1, 90), lk.log_tail()
    deadline = time.monotonic() + 90
    while call.transport.agent_identity in ("", first_agent) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert call.transport.agent_identity not in ("", first_agent), call.notes
    await asyncio.sleep(1.0)
    await call.say("Are you still there? Do you have tea?")
    await call.agent_turn(timeout=60)

    detail = await call.wait_detail(lambda d: len(d["turns"]) >= 3, "a turn with the new agent")
    assert len([t for t in detail["turns"] if not t["user_text"]]) == 1, "no second greeting"
    events = lk.events(call.session_id)
    started = [p for _, kind, p in events if kind == "agent.job_started"]
    assert started[-1]["resumed"] is True and started[-1]["restored_turns"] >= 2
    assert any(kind == "agent.lost" for _, kind, _ in events)


async def test_the_servers_webhooks_are_stored_once_and_a_replay_changes_nothing(
    caller, lk: LiveKitPlatform, webhook_tap: WebhookTap
) -> None:
    call = caller()
    await call.start()
    await call.agent_turn()
    await call.api.session_end(call.session_id)
    room = (await call.detail())["room"]
    deadline = time.monotonic() + 30
    while not any(e["json"]["event"] == "room_finished" for e in webhook_tap.events(room)):
        assert time.monotonic() < deadline, "no room_finished webhook"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # the platform got the same deliveries; let Celery apply them
    deliveries = webhook_tap.events(room)
    ids = [d["json"]["id"] for d in deliveries]
    stored = lk.query(
        "SELECT event_id, processed_at FROM sessions_app_livekitwebhookevent WHERE room_name = %s", (room,)
    )
    assert sorted(ids) == sorted(row[0] for row in stored), "every delivery stored, once"
    assert all(row[1] is not None for row in stored), "and processed"

    events_before = lk.events(call.session_id)
    async with aiohttp.ClientSession() as http:
        for delivery in deliveries:  # the same signed bodies again: at-least-once delivery
            async with http.post(
                f"{lk.base_url}/api/v1/livekit/webhook",
                data=delivery["body"],
                headers={"Authorization": delivery["authorization"], "Content-Type": "application/webhook+json"},
            ) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["duplicate"] is True
        tampered = deliveries[0]["body"].replace(room, room[:-1] + "x")
        async with http.post(
            f"{lk.base_url}/api/v1/livekit/webhook",
            data=tampered,
            headers={"Authorization": deliveries[0]["authorization"], "Content-Type": "application/webhook+json"},
        ) as response:
            assert response.status == 401, "a body that does not match the signed hash"
    await asyncio.sleep(2)
    assert lk.events(call.session_id) == events_before
