"""The web server, in one place: gunicorn with uvicorn workers.

The Procfile's `web:` line, the demo, the browser tests and the benchmarks all serve
`voiceplatform.asgi:application` through `web_server_command`:

    gunicorn -c python:voiceplatform.gunicorn_conf --bind 127.0.0.1:8000 voiceplatform.asgi:application

gunicorn is the process manager operators know: WEB_PROCESSES worker processes (one per
core; one Python process cannot use a second core), a dead worker replaced, a worker that
stops answering its heartbeat killed after WEB_WORKER_TIMEOUT_SECONDS, each worker
recycled after WEB_MAX_REQUESTS requests (with jitter), a graceful reload on SIGHUP and a
graceful stop on SIGTERM. Each worker is uvicorn (`uvicorn-worker`, maintained by the
uvicorn authors): its HTTP parser, event loop and websockets; HTTP requests then run on
WEB_THREADS threads (voiceplatform/asgi.py, voiceplatform/wsgibridge.py) and websockets
on the loop (Channels). gunicorn's settings are in voiceplatform/gunicorn_conf.py.

The workers share one listening socket, so whichever wakes first accepts the connections
waiting: a client that opens a few keep-alive connections at once can land them all on one
worker (docs/api.md measures it). A load balancer in front, or many clients, evens this
out; we do not patch the server for it.
"""

from __future__ import annotations

import sys
from typing import Any

from uvicorn_worker import UvicornWorker

ASGI_APP = "voiceplatform.asgi:application"
GRACEFUL_SHUTDOWN_S = 5  # dashboards keep websockets open; do not wait for them forever on Ctrl-C
# The server closes a websocket with 1009 on a message bigger than this, before buffering it
# (uvicorn's default is 16 MiB). Consumers refuse frames over 64 KiB themselves, with 4413
# (sessions_app/live/consumers.py); this bounds the memory a client can make a process hold.
WS_MAX_MESSAGE_BYTES = 1024 * 1024


class PlatformUvicornWorker(UvicornWorker):
    """uvicorn's gunicorn worker with the platform's uvicorn options."""

    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",  # Channels' router has no lifespan protocol
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }


def web_server_command(*, host: str, port: int, processes: int | None = None, python: str | None = None) -> list[str]:
    """The argv that serves the platform on host:port (WEB_PROCESSES workers by default)."""
    argv = [python or sys.executable, "-m", "gunicorn", "-c", "python:voiceplatform.gunicorn_conf"]
    argv += ["--bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if processes:
        argv += ["--workers", str(processes)]
    return [*argv, ASGI_APP]
