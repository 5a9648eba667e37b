"""A local HTTP webhook receiver on loopback, for report-webhook tests.

It answers the scripted status codes, then 200, and records every request (headers,
body, arrival time). `hold` requests are held open first: the handler waits until the test
calls `release()` (or `HOLD_LIMIT_S` passes), as a slow receiver would, so a test can act
while a delivery is in flight. The platform refuses loopback targets unless
OUTBOUND_ALLOWED_NETWORKS admits them: tests set it to `127.0.0.0/8`, as an operator would
for a receiver of their own network.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_LIMIT_S = 120.0


@dataclass
class ReceivedRequest:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the body was in
    answered: bool = False  # the response was written without error


class WebhookReceiver:
    def __init__(self, statuses: list[int] | None = None, *, hold: int = 0) -> None:
        self.statuses = list(statuses or [])
        self.hold = hold
        self.requests: list[ReceivedRequest] = []
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                record = ReceivedRequest(dict(self.headers.items()), body, time.monotonic())
                receiver.requests.append(record)
                if len(receiver.requests) <= receiver.hold:
                    receiver._released.wait(HOLD_LIMIT_S)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                with contextlib.suppress(OSError):  # the sender may be gone (killed) by now
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.flush()
                    record.answered = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/voice"

    def release(self) -> None:
        """Let held requests answer."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
