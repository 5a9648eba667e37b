"""The caller's side of the local agent host protocol."""

from __future__ import annotations

import asyncio

import pytest

from agents_app.runtime.simulator import transport as transport_module
from agents_app.runtime.simulator.transport import HostTransport, TransportError
from agents_app.runtime.worker.local_wire import StreamChannel
from tests.ports import free_port


def _transport(notes: list[str]) -> HostTransport:
    return HostTransport(on_agent_audio=lambda samples, rate: None, on_note=notes.append)


async def test_it_waits_for_an_agent_host_that_is_still_starting() -> None:
    port = free_port()
    hellos: list[dict] = []

    async def host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = StreamChannel(reader, writer)
        hellos.append(await channel.recv())
        await channel.send({"type": "welcome", "protocol": 1, "session_id": "s", "room": "r"})
        await channel.send({"type": "agent.speaking", "speaking": True})
        await asyncio.sleep(0.2)
        await channel.close()

    async def start_late() -> asyncio.base_events.Server:
        await asyncio.sleep(1.0)
        return await asyncio.start_server(host, "127.0.0.1", port)

    notes: list[str] = []
    late = asyncio.create_task(start_late())
    caller = _transport(notes)
    await caller.connect(f"local://127.0.0.1:{port}", "the-token")
    server = await late
    await caller.wait_speaking(True, 5)
    assert await caller.wait_closed(5)
    assert hellos == [{"type": "hello", "token": "the-token", "protocol": 1}]
    assert any("waiting for the local agent host" in n for n in notes)
    server.close()


async def test_it_gives_up_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "AGENT_HOST_WAIT_SECONDS", 0.5)
    with pytest.raises(TransportError, match="runagent"):
        await _transport([]).connect(f"local://127.0.0.1:{free_port()}", "t")


async def test_it_rejects_a_url_that_is_not_the_local_host() -> None:
    with pytest.raises(TransportError, match="local://host:port"):
        await _transport([]).connect("wss://livekit.example.com", "t")


async def test_a_refused_hello_is_an_error_with_the_host_reason() -> None:
    async def host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = StreamChannel(reader, writer)
        await channel.recv()
        await channel.send({"type": "error", "code": "invalid_token", "message": "token rejected: expired"})
        await channel.close()

    server = await asyncio.start_server(host, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(TransportError, match="expired"):
        await _transport([]).connect(f"local://127.0.0.1:{port}", "t")
    server.close()
