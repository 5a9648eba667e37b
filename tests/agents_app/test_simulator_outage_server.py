"""The scripted outage server's fixed latency and transcriptions (the stand-in provider bench/capacity.py uses).

No timing is asserted: the server's wait is replaced by a recorder, and the test checks
that every healthy answer waits for its latency before the first byte, and errors do not.
"""

from __future__ import annotations

import json

import aiohttp

from agents_app.runtime.simulator import outage_server
from agents_app.runtime.simulator.outage_server import ScriptedOutageServer


class RecordingServer(ScriptedOutageServer):
    """Records each latency wait instead of sleeping."""

    waits: list[float]

    async def _wait_latency(self, received: float) -> None:
        self.waits.append(self.latency)


async def _chat(session: aiohttp.ClientSession, base_url: str) -> tuple[int, str]:
    async with session.post(
        f"{base_url}/chat/completions", json={"model": "m", "stream": True, "messages": []}
    ) as response:
        text = ""
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        return response.status, text


async def test_healthy_answers_wait_for_the_latency_before_the_first_byte_and_errors_do_not(monkeypatch):
    monkeypatch.setattr(outage_server, "_speech_pcm24k", lambda text: b"\x01\x00" * 240)
    server = RecordingServer(
        script=["ok", "500"], then="ok", latency=0.15, reply="Fixed latency reply.", transcript="Heard you."
    )
    server.waits = []
    async with server, aiohttp.ClientSession() as session:
        assert await _chat(session, server.base_url) == (200, "Fixed latency reply.")
        status, _ = await _chat(session, server.base_url)
        assert status == 500
        async with session.post(f"{server.base_url}/audio/speech", json={"model": "t", "input": "Hi."}) as response:
            assert response.status == 200
            assert await response.read() == b"\x01\x00" * 240
        form = aiohttp.FormData()
        form.add_field("file", b"RIFF....", filename="file.wav", content_type="audio/wav")
        form.add_field("model", "s")
        async with session.post(f"{server.base_url}/audio/transcriptions", data=form) as response:
            assert (response.status, await response.json()) == (200, {"text": "Heard you."})
    # One wait per healthy answer (chat, speech, transcription), none for the 500.
    assert server.waits == [0.15, 0.15, 0.15]
    assert [entry["mode"] for entry in server.log] == ["ok", "500", "ok", "ok"]


def test_speech_is_synthesized_once_per_text():
    assert hasattr(outage_server._speech_pcm24k, "cache_info")  # functools.lru_cache


def test_the_default_is_no_added_latency():
    assert ScriptedOutageServer().latency == 0.0
