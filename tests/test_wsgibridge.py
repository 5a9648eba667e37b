"""voiceplatform.wsgibridge: HTTP through a WSGI app with one thread hop per request."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from voiceplatform.wsgibridge import WSGIBridge


def _scope(method: str = "GET", path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "headers": headers or [(b"host", b"testserver")],
    }


def _call(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one ASGI request; return what the app sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


class Recorder:
    """A WSGI app that echoes its body and records which threads ran and closed it."""

    def __init__(self, chunks: list[bytes] | None = None) -> None:
        self.chunks = chunks
        self.calls: list[dict[str, Any]] = []
        self.closed_in: list[int] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read()
        self.calls.append({"thread": threading.get_ident(), "body": body, "path": environ["PATH_INFO"]})
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Seen", str(len(body)))])
        recorder = self

        class Body:
            def __iter__(self):
                return iter(recorder.chunks if recorder.chunks is not None else [b"got:", body])

            def close(self) -> None:
                recorder.closed_in.append(threading.get_ident())

        return Body()


def test_a_small_response_goes_out_in_one_piece_from_a_body_sent_in_parts():
    app = Recorder()
    sent = _call(
        WSGIBridge(app, workers=2),
        _scope("POST", "/echo"),
        [
            {"type": "http.request", "body": b"hello ", "more_body": True},
            {"type": "http.request", "body": b"world", "more_body": False},
        ],
    )
    assert app.calls[0]["body"] == b"hello world" and app.calls[0]["path"] == "/echo"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 201
    assert (b"x-seen", b"11") in sent[0]["headers"] and (b"content-type", b"text/plain") in sent[0]["headers"]
    assert sent[1]["body"] == b"got:hello world" and not sent[1].get("more_body", False)
    # Closed on the thread that ran it: Django returns that thread's DB connection there.
    assert app.closed_in == [app.calls[0]["thread"]] and app.calls[0]["thread"] != threading.get_ident()


def test_a_response_over_the_buffer_limit_is_streamed_in_order():
    chunks = [bytes([65 + i]) * 40 for i in range(10)]  # 400 bytes
    app = Recorder(chunks)
    sent = _call(WSGIBridge(app, workers=1, buffer_limit=100), _scope(), [{"type": "http.request", "body": b""}])
    assert sent[0]["type"] == "http.response.start"
    bodies = sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert all(m["more_body"] for m in bodies[:-1]) and not bodies[-1].get("more_body", False)
    assert len(bodies) > 2  # streamed, not one piece
    assert b"".join(m["body"] for m in bodies) == b"".join(chunks)
    assert len(app.closed_in) == 1


def test_a_client_gone_before_its_body_arrived_never_reaches_the_app():
    app = Recorder()
    sent = _call(
        WSGIBridge(app, workers=1),
        _scope("POST"),
        [{"type": "http.request", "body": b"part", "more_body": True}, {"type": "http.disconnect"}],
    )
    assert sent == [] and app.calls == []


def test_the_django_app_answers_through_the_bridge():
    from django.core.wsgi import get_wsgi_application

    sent = _call(
        WSGIBridge(get_wsgi_application(), workers=1),
        _scope("GET", "/api/v1/openapi.json"),
        [{"type": "http.request", "body": b""}],
    )
    assert sent[0]["status"] == 200
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["paths"]["/api/v1/sessions"]


def test_a_body_over_the_limit_gets_413_and_never_reaches_the_app():
    app = Recorder()
    bridge = WSGIBridge(app, workers=1, max_body=10)
    sent = _call(
        bridge,
        _scope("POST"),
        [
            {"type": "http.request", "body": b"123456", "more_body": True},
            {"type": "http.request", "body": b"789012", "more_body": False},
        ],
    )
    assert app.calls == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {
        "code": "body_too_large",
        "message": "The request body is over 10 bytes.",
        "details": {"limit_bytes": 10},
    }
    # One piece over the limit is refused too; at the limit it passes.
    assert _call(bridge, _scope("POST"), [{"type": "http.request", "body": b"x" * 11}])[0]["status"] == 413
    assert _call(bridge, _scope("POST"), [{"type": "http.request", "body": b"x" * 10}])[0]["status"] == 201
