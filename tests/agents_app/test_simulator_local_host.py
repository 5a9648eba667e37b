"""The local agent host: token check, session states, audio both ways, agent restart.

The agent job is replaced by a small stand-in (the real pipeline is covered by the
pipeline and e2e tests): it records what it was started for and plays one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np
import pytest
from django.test import override_settings
from livekit import rtc

from agents_app.runtime.worker import local, local_server
from agents_app.runtime.worker.local_server import AgentHost
from agents_app.runtime.worker.local_wire import (
    AudioChunk,
    ProtocolError,
    StreamChannel,
    decode,
    encode,
    memory_channel_pair,
)
from sessions_app.models import SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_create, session_end
from sessions_app.tokens import caller_token_mint

pytestmark = pytest.mark.django_db(transaction=True)


class FakeJobs:
    """Stands in for run_local_job: one entry per job started, plays one frame."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.calls: list[Any] = []

    async def __call__(self, *, session_id: str, call: Any, entrypoint: Any) -> None:
        call._bind(asyncio.get_running_loop())
        call._job_task = asyncio.current_task()
        self.started.append(session_id)
        self.calls.append(call)
        call._set_speaking(True)
        call._emit_played(rtc.AudioFrame(np.full(220, 7, dtype=np.int16).tobytes(), 22050, 1, 220))
        call._set_speaking(False)
        try:
            await call.wait_closed()
        finally:
            call._close()


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> FakeJobs:
    fake = FakeJobs()
    monkeypatch.setattr(local, "run_local_job", fake)
    return fake


@pytest.fixture
def session_and_token(agent) -> tuple[VoiceSession, str]:
    session, token = session_create(agent_slug=agent.slug, caller_id="caller-1")
    return session, token.token


async def _state(session_id: Any) -> str:
    from asgiref.sync import sync_to_async

    return await sync_to_async(lambda: VoiceSession.objects.get(pk=session_id).state)()


async def _wait_state(session_id: Any, state: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (current := await _state(session_id)) != state:
        assert asyncio.get_running_loop().time() < deadline, f"state stayed {current}, expected {state}"
        await asyncio.sleep(0.05)


async def _recv_until(channel: Any, kind: str, timeout: float = 10) -> Any:
    async def _loop() -> Any:
        while True:
            message = await channel.recv()
            if message is None:
                raise AssertionError(f"closed before {kind}")
            if kind == "audio" and isinstance(message, AudioChunk):
                return message
            if isinstance(message, dict) and message.get("type") == kind:
                return message

    return await asyncio.wait_for(_loop(), timeout)


def test_messages_survive_the_wire_format() -> None:
    hello = {"type": "hello", "token": "abc"}
    chunk = AudioChunk(pcm=np.arange(10, dtype=np.int16).tobytes(), sample_rate=16000)
    for message in (hello, chunk):
        frame = encode(message)
        kind, length = frame[0], int.from_bytes(frame[1:5], "big")
        assert length == len(frame) - 5
        assert decode(kind, frame[5:]) == message


@pytest.mark.parametrize(
    ("kind", "payload"),
    [(1, b"not json"), (1, b"[1, 2]"), (2, b"\x00\x00\x3e\x80\x01"), (2, b"\x00\x00\x00\x01\x00\x00"), (9, b"")],
)
def test_it_rejects_malformed_messages(kind: int, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(kind, payload)


async def test_a_token_signed_with_another_secret_is_refused(jobs: FakeJobs, session_and_token) -> None:
    session, _ = session_and_token
    with override_settings(LIVEKIT_API_SECRET="another-secret-that-is-long-enough-0123456789"):
        forged = caller_token_mint(room=session.room_name, caller_id="caller-1").token
    caller, host_end = memory_channel_pair()
    task = AgentHost().spawn(host_end)
    await caller.send({"type": "hello", "token": forged})
    answer = await caller.recv()
    await task
    assert answer["type"] == "error" and answer["code"] == "invalid_token"
    assert jobs.started == [] and await _state(session.pk) == SessionState.CREATED


async def test_a_token_for_an_unknown_room_is_refused(jobs: FakeJobs, agent) -> None:
    token = caller_token_mint(room="vs-nosuchroom", caller_id="x").token
    caller, host_end = memory_channel_pair()
    task = AgentHost().spawn(host_end)
    await caller.send({"type": "hello", "token": token})
    answer = await caller.recv()
    await task
    assert answer["code"] == "unknown_room" and jobs.started == []


async def test_the_first_message_must_be_a_hello(jobs: FakeJobs) -> None:
    caller, host_end = memory_channel_pair()
    task = AgentHost().spawn(host_end)
    await caller.send({"type": "hangup"})
    answer = await caller.recv()
    await task
    assert answer["code"] == "hello_expected"


async def test_an_ended_session_cannot_be_joined(jobs: FakeJobs, session_and_token) -> None:
    from asgiref.sync import sync_to_async

    session, token = session_and_token
    await sync_to_async(session_end)(session_id=session.pk)
    caller, host_end = memory_channel_pair()
    task = AgentHost().spawn(host_end)
    await caller.send({"type": "hello", "token": token})
    answer = await caller.recv()
    await task
    assert answer["code"] == "session_final" and jobs.started == []


async def test_over_tcp_a_caller_activates_the_session_hears_the_agent_and_a_drop_makes_it_reconnecting(
    jobs: FakeJobs, session_and_token
) -> None:
    session, token = session_and_token
    ready = asyncio.Event()
    server = asyncio.create_task(local_server.serve_async(host="127.0.0.1", port=0, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # port 0: find the port the OS gave the server from its listening socket
        port = _listening_port()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        channel = StreamChannel(reader, writer)
        await channel.send({"type": "hello", "token": token})
        welcome = await _recv_until(channel, "welcome")
        assert welcome["session_id"] == str(session.pk)
        await _wait_state(session.pk, SessionState.ACTIVE)
        speaking = await _recv_until(channel, "agent.speaking")
        assert speaking["speaking"] is True
        audio = await _recv_until(channel, "audio")
        assert audio.sample_rate == 22050 and set(audio.samples.tolist()) == {7}
        # caller → agent: what the caller sends is queued for the agent, resampled to 16 kHz
        await channel.send(AudioChunk(pcm=np.full(1600, 100, dtype=np.int16).tobytes(), sample_rate=16000))
        await asyncio.sleep(0.3)
        assert jobs.calls[0].caller_audio_pending_seconds > 0
        await channel.close()  # the line drops
        await _wait_state(session.pk, SessionState.RECONNECTING)
        assert jobs.calls[0].closed
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def _listening_port() -> int:
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, asyncio.base_events.Server) and obj.sockets:
            return obj.sockets[0].getsockname()[1]
    raise AssertionError("no listening server")


async def test_a_reconnecting_caller_gets_a_new_job_for_the_same_session(jobs: FakeJobs, session_and_token) -> None:
    from asgiref.sync import sync_to_async

    from sessions_app.services import session_reconnect

    session, token = session_and_token
    host = AgentHost()
    caller, host_end = memory_channel_pair()
    first = host.spawn(host_end)
    await caller.send({"type": "hello", "token": token})
    await _recv_until(caller, "welcome")
    await caller.close()
    await first
    await _wait_state(session.pk, SessionState.RECONNECTING)
    _, fresh = await sync_to_async(session_reconnect)(session_id=session.pk)
    caller, host_end = memory_channel_pair()
    second = host.spawn(host_end)
    await caller.send({"type": "hello", "token": fresh.token})
    await _recv_until(caller, "welcome")
    await _wait_state(session.pk, SessionState.ACTIVE)
    assert jobs.started == [str(session.pk), str(session.pk)]
    await caller.send({"type": "hangup"})
    bye = await _recv_until(caller, "bye")
    await second
    assert bye["reason"] == "caller hung up"


async def test_agent_restart_kills_the_job_and_starts_a_new_one_for_the_same_session(
    jobs: FakeJobs, session_and_token
) -> None:
    from asgiref.sync import sync_to_async

    session, token = session_and_token
    caller, host_end = memory_channel_pair()
    task = AgentHost(allow_control=True).spawn(host_end)
    await caller.send({"type": "hello", "token": token})
    await _recv_until(caller, "welcome")
    await caller.send({"type": "control", "action": "agent-restart"})
    restarted = await _recv_until(caller, "agent.restarted")
    assert restarted["job"] == 2
    assert jobs.started == [str(session.pk), str(session.pk)]
    assert jobs.calls[0].killed and not jobs.calls[1].closed
    assert await _state(session.pk) == SessionState.ACTIVE  # a re-dispatch, not a reconnect

    def _agent_events() -> list[tuple[str, str]]:
        rows = SessionEvent.objects.filter(session=session, type__in=("agent.joined", "agent.lost")).order_by("seq")
        return [(e.type, e.payload.get("identity", "")) for e in rows]

    events = await sync_to_async(_agent_events)()
    # The session lifecycle's rule, as for a LiveKit job that crashed: lost, then a new agent.
    assert [kind for kind, _ in events] == ["agent.joined", "agent.lost", "agent.joined"]
    assert events[0][1] == events[1][1] != events[2][1]
    await caller.close()
    await task


async def test_control_messages_are_refused_when_disabled(jobs: FakeJobs, session_and_token) -> None:
    _, token = session_and_token
    caller, host_end = memory_channel_pair()
    task = AgentHost(allow_control=False).spawn(host_end)
    await caller.send({"type": "hello", "token": token})
    await _recv_until(caller, "welcome")
    await caller.send({"type": "control", "action": "agent-restart"})
    error = await _recv_until(caller, "error")
    assert error["code"] == "forbidden" and len(jobs.started) == 1
    await caller.close()
    await task
