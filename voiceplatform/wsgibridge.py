"""HTTP for the ASGI server: Django's WSGI handler on a thread pool, one thread hop per request.

Every HTTP view of the platform is synchronous. Served by Django's ASGI handler, a request
hops between the event loop and threads for the middleware and again for the view. The
general-purpose a2wsgi bridge runs the whole request on one worker thread, but the thread
still calls back into the event loop, and waits, for each piece of the body it reads, for
the start of the response and for every body chunk (4 or more round trips a request).

This bridge reads the request body on the event loop first, runs the WSGI application on
a worker thread, and collects the response there. Responses up to BUFFER_LIMIT bytes (every
API answer, most pages) come back in one piece and are sent from the event loop. Bigger
ones (a large static file, a long export) are streamed from the worker thread chunk by
chunk, as a2wsgi would. A request body over MAX_BODY_BYTES gets 413 `body_too_large`
before Django sees it. The environ is built by a2wsgi's `build_environ`.
bench/token_api.py measures the difference (docs/api.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import build_environ

from voiceplatform.api_errors import error_body

# Responses up to this size are collected on the worker thread and sent in one piece.
BUFFER_LIMIT = 256 * 1024
# Request bodies up to this size stay in memory; bigger ones are spooled to a temporary file.
BODY_MEMORY_LIMIT = 2_621_440  # Django's FILE_UPLOAD_MAX_MEMORY_SIZE default
# A bigger body is refused with 413 before it reaches Django (or the disk). Nothing the
# platform accepts comes near it: API bodies are JSON of a few KiB.
MAX_BODY_BYTES = 10 * 1024 * 1024


class BodyTooLarge(Exception):
    pass


Send = Callable[[dict[str, Any]], Any]


async def _read_body(receive: Callable[[], Any], limit: int) -> Any:
    """The whole request body as a file object, or None when the client went away first.

    Raises BodyTooLarge past `limit` bytes.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    if not message.get("more_body", False) and len(message.get("body", b"")) <= limit:
        return io.BytesIO(message.get("body", b""))
    body = tempfile.SpooledTemporaryFile(max_size=BODY_MEMORY_LIMIT)
    size = 0
    while True:
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            body.close()
            raise BodyTooLarge
        body.write(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            body.close()
            return None
    body.seek(0)
    return body


async def _send_too_large(send: Send, limit: int) -> None:
    payload = json.dumps(
        error_body("body_too_large", f"The request body is over {limit} bytes.", {"limit_bytes": limit})
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _Response:
    """One WSGI response as it is produced on the worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send, buffer_limit: int) -> None:
        self.loop, self.send, self.buffer_limit = loop, send, buffer_limit
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        if exc_info is not None and self.streaming:  # headers already went out: nothing to replace
            raise exc_info[1].with_traceback(exc_info[2])
        self.start = {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [
                (name.strip().lower().encode("latin1"), value.strip().encode("latin1")) for name, value in headers
            ],
        }
        return self.write

    def _send_now(self, message: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self.send(message), self.loop).result()

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.streaming:
            self._send_now({"type": "http.response.body", "body": chunk, "more_body": True})
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.buffer_limit:  # too big to hold: send what we have, stream the rest
            assert self.start is not None, "WSGI application wrote before start_response"
            self.streaming = True
            self._send_now(self.start)
            self._send_now({"type": "http.response.body", "body": b"".join(self.chunks), "more_body": True})
            self.chunks = []

    def run(self, app: Callable, environ: dict[str, Any]) -> bool:
        """Run the application; True when the whole response is buffered for the loop to send."""
        iterable: Iterable[bytes] = app(environ, self.start_response)
        try:
            for chunk in iterable:
                self.write(chunk)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()  # Django's request_finished: returns this thread's DB connection
        if self.streaming:
            self._send_now({"type": "http.response.body", "body": b""})
            return False
        return True


class WSGIBridge:
    """An ASGI application serving HTTP through a WSGI application on `workers` threads."""

    def __init__(
        self, app: Callable, *, workers: int, buffer_limit: int = BUFFER_LIMIT, max_body: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.buffer_limit = buffer_limit
        self.max_body = max_body
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="web")

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"WSGIBridge serves HTTP only, not {scope['type']!r}")
        try:
            body = await _read_body(receive, self.max_body)
        except BodyTooLarge:
            await _send_too_large(send, self.max_body)
            return
        if body is None:
            return
        try:
            loop = asyncio.get_running_loop()
            response = _Response(loop, send, self.buffer_limit)
            context = contextvars.copy_context()
            buffered = await loop.run_in_executor(
                self.executor, context.run, response.run, self.app, build_environ(scope, body)
            )
        finally:
            body.close()
        if buffered:
            if response.start is None:
                raise RuntimeError("WSGI application returned without calling start_response")
            await send(response.start)
            await send({"type": "http.response.body", "body": b"".join(response.chunks)})
