"""A scripted outage server: a local OpenAI-compatible chat endpoint that fails on cue.

NOT a model. It exists to simulate provider failures for the `provider-outage` scenario
and the failover tests: it speaks the chat-completions streaming protocol (server-sent
events, as OpenAI, Ollama or vLLM do) so the real `livekit.plugins.openai.LLM` can be
pointed at it, and answers each request according to a script:

- ``ok``    a short streamed reply (``reply`` text, or a fixed sentence)
- ``500``   HTTP 500 with an OpenAI-style error body
- ``429``   HTTP 429 with ``Retry-After`` (rate limited)
- ``hang``  accept the request and send nothing for ``hang_seconds`` (past any timeout)
- ``cut``   stream the first half of the reply, then drop the connection

It also serves ``/v1/audio/speech`` (the openai TTS plugin's endpoint) with the same
modes, answering ``ok`` with Piper speech as 24 kHz PCM, for TTS outages, and
``/v1/audio/transcriptions`` (the openai STT plugin's, non-streaming) answering ``ok`` with
the fixed ``transcript`` whatever was said.

The ``script`` is consumed one entry per request; when it runs out, ``then`` applies
(default ``ok``). ``down_for`` seconds makes every request fail with ``then_failure``
for that long after start, then answer normally: "the provider is down for a while".
``latency`` seconds (default 0) delays the first byte of every answer that is not an
error: a healthy provider of fixed latency, the stand-in `bench/capacity.py` measures the
platform against. Speech is synthesized once per text (cached), so a repeated answer costs
the server no Piper time and its latency stays what was asked.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODES = ("ok", "500", "429", "hang", "cut")
DEFAULT_REPLY = "Sure, I can help with that. Your request is noted."
DEFAULT_TRANSCRIPT = "Hello, what are your opening hours?"


def _chunk(delta: dict[str, Any], finish: str | None = None, model: str = "scripted-outage") -> bytes:
    body = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


@functools.lru_cache(maxsize=64)
def _speech_pcm24k(text: str) -> bytes:
    import numpy as np

    from agents_app.runtime.providers import piper

    audio, rate = piper.synthesize(text)
    if rate != 24000 and len(audio):
        positions = np.linspace(0, len(audio) - 1, int(len(audio) * 24000 / rate))
        audio = np.interp(positions, np.arange(len(audio)), audio.astype(np.float32)).astype(np.int16)
    return audio.astype(np.int16).tobytes()


@dataclass
class ScriptedOutageServer:
    script: list[str] = field(default_factory=list)
    then: str = "ok"
    reply: str = DEFAULT_REPLY
    transcript: str = DEFAULT_TRANSCRIPT
    hang_seconds: float = 30.0
    retry_after: int = 1
    down_for: float = 0.0
    then_failure: str = "500"
    latency: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for mode in [*self.script, self.then, self.then_failure]:
            if mode not in MODES:
                raise ValueError(f"unknown outage mode {mode!r}; use one of {', '.join(MODES)}")
        self._queue: deque[str] = deque(self.script)
        self._runner: web.AppRunner | None = None
        self._started_at = 0.0
        self._hanging: set[asyncio.Task[Any]] = set()

    # -- control ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set_mode(self, mode: str) -> None:
        """From now on answer every request with `mode` (clears the script)."""
        if mode not in MODES:
            raise ValueError(f"unknown outage mode {mode!r}")
        self._queue.clear()
        self.then = mode
        self.down_for = 0.0

    def _next_mode(self) -> str:
        if self.down_for and time.monotonic() - self._started_at < self.down_for:
            return self.then_failure
        return self._queue.popleft() if self._queue else self.then

    async def _wait_latency(self, received: float) -> None:
        """Hold the first byte until `latency` seconds after the request arrived."""
        delay = received + self.latency - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- HTTP ------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except ConnectionResetError:  # the client gave up (its timeout): nothing to answer
            return web.Response(status=499)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        body = await request.json()
        mode = self._next_mode()
        self.log.append({"at": time.time(), "mode": mode, "model": body.get("model")})
        if mode in ("500", "429"):
            return await self._fail(mode)
        if mode == "hang":
            task = asyncio.current_task()
            if task is not None:
                self._hanging.add(task)
            try:
                await asyncio.sleep(self.hang_seconds)
            finally:
                if task is not None:
                    self._hanging.discard(task)
        await self._wait_latency(received)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        split = self.reply.split()
        words = [w + (" " if i < len(split) - 1 else "") for i, w in enumerate(split)]
        if mode == "cut":
            for word in words[: max(1, len(words) // 2)]:
                await response.write(_chunk({"role": "assistant", "content": word}))
            await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.close()  # no terminating chunk: the client sees a broken stream
            return response
        for word in words:
            await response.write(_chunk({"role": "assistant", "content": word}))
        await response.write(_chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        """`/v1/audio/speech`: Piper speech as 24 kHz PCM (what the openai TTS plugin reads)."""
        try:
            return await self._speak(request)
        except ConnectionResetError:
            return web.Response(status=499)

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        body = await request.json()
        mode = self._next_mode()
        self.log.append({"at": time.time(), "mode": mode, "model": body.get("model"), "input": body.get("input")})
        if mode in ("500", "429"):
            return await self._fail(mode)
        if mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        pcm = await asyncio.to_thread(_speech_pcm24k, str(body.get("input") or ""))
        await self._wait_latency(received)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        if mode == "cut":
            await response.write(pcm[: len(pcm) // 4 * 2])
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(pcm)
        await response.write_eof()
        return response

    async def _transcription(self, request: web.Request) -> web.StreamResponse:
        """`/v1/audio/transcriptions`: the fixed transcript (the audio is read, not decoded)."""
        received = time.monotonic()
        await request.read()
        mode = self._next_mode()
        self.log.append({"at": time.time(), "mode": mode, "model": "transcription"})
        if mode in ("500", "429", "cut"):  # a cut JSON body is as good as an error
            return await self._fail("429" if mode == "429" else "500")
        if mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        await self._wait_latency(received)
        return web.json_response({"text": self.transcript})

    async def _fail(self, mode: str) -> web.Response:
        if mode == "429":
            return web.json_response(
                {"error": {"message": "scripted outage: rate limited", "type": "rate_limit_exceeded"}},
                status=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        return web.json_response(
            {"error": {"message": "scripted outage: internal error", "type": "server_error"}}, status=500
        )

    async def start(self) -> ScriptedOutageServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started_at = time.monotonic()
        return self

    async def stop(self) -> None:
        for task in list(self._hanging):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedOutageServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- for sync callers (the simulator command) --------------------------------------
    def start_in_thread(self) -> ScriptedOutageServer:
        """Serve from a daemon thread with its own loop; returns once listening."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._thread_loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="scripted-outage-server", daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the scripted outage server did not start")
        return self

    def stop_thread(self) -> None:
        loop = getattr(self, "_thread_loop", None)
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
