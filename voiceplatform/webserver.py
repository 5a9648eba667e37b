"""The web server, in one place: the demo, the Procfile, the browser tests and the benchmarks
all serve `voiceplatform.asgi:application` through `web_server_command`.

    python -m voiceplatform.webserver --host 127.0.0.1 --port 8000 [--processes N]

uvicorn in WEB_PROCESSES processes (default 2, one per core of the reference machine), each
running HTTP requests on WEB_THREADS threads (voiceplatform/asgi.py) and websockets on its
event loop. One process cannot use a second core (the GIL), and daphne has no worker
processes: on 2 cores one daphne created 98 sessions a second where 2 uvicorn processes
created 178 (docs/api.md has the measurements).

Why not `uvicorn --workers N`: its workers share one listening socket, and whichever
worker wakes first accepts every connection waiting. A client that opens a few keep-alive
connections at once (an API client's connection pool, the benchmark's 8) often lands on
one worker while the other idles: bench/token_api.py saw 1 round in 4 with all 8 on one
process, at two thirds of the throughput. Here each process binds its own socket with
SO_REUSEPORT, and the kernel spreads new connections over them. Where SO_REUSEPORT is
missing (not Linux or BSD), uvicorn's own `--workers` is used instead.

This module's supervisor starts the processes, passes Ctrl-C / SIGTERM on to them, and
restarts one that dies; a process that dies within STARTUP_GRACE_S of starting (port
taken, broken settings) stops the whole server instead, with its exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings

ASGI_APP = "voiceplatform.asgi:application"
STARTUP_GRACE_S = 5.0
GRACEFUL_SHUTDOWN_S = 5  # dashboards keep websockets open; do not wait for them forever on Ctrl-C
# The server closes a websocket with 1009 on a message bigger than this, before buffering it
# (uvicorn's default is 16 MiB). Consumers refuse frames over 64 KiB themselves, with 4413
# (sessions_app/consumers.py); this bounds the memory a client can make a process hold.
WS_MAX_MESSAGE_BYTES = 1024 * 1024


def web_server_command(*, host: str, port: int, processes: int | None = None, python: str | None = None) -> list[str]:
    """The argv that serves the platform on host:port (WEB_PROCESSES processes by default)."""
    return [
        python or sys.executable,
        "-m",
        "voiceplatform.webserver",
        "--host",
        host,
        "--port",
        str(port),
        "--processes",
        str(processes or settings.WEB_PROCESSES),
    ]


def _uvicorn_options(host: str, port: int) -> dict:
    return {
        "host": host,
        "port": port,
        "lifespan": "off",  # Channels' router has no lifespan protocol
        "access_log": False,  # requests are counted in /metrics; an access line each would flood the demo
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
    }


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"web: cannot listen on {host}:{port}: {exc}") from exc
    return sock


def serve_one(host: str, port: int, *, reuse_port: bool) -> None:
    """Run one uvicorn server in this process (on its own SO_REUSEPORT socket if asked)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(ASGI_APP, **_uvicorn_options(host, port)))
    server.run(sockets=[_reuse_port_socket(host, port)] if reuse_port else None)


def supervise(host: str, port: int, processes: int) -> int:
    """Run `processes` single-process servers sharing the port; the exit code of the server."""
    argv = [sys.executable, "-m", "voiceplatform.webserver", "--host", host, "--port", str(port), "--serve-one"]

    def start() -> tuple[subprocess.Popen, float]:
        return subprocess.Popen(argv), time.monotonic()

    children = [start() for _ in range(processes)]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for proc, _ in children:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    exit_code = 0
    while not stopping:
        time.sleep(0.2)
        for i, (proc, started) in enumerate(children):
            code = proc.poll()
            if code is None or stopping:
                continue
            if time.monotonic() - started < STARTUP_GRACE_S:
                print(f"web: a server process exited at startup (code {code}); stopping", file=sys.stderr)
                exit_code = code or 1
                on_signal(signal.SIGTERM, None)
                break
            print(f"web: server process {proc.pid} exited (code {code}); starting another", file=sys.stderr)
            children[i] = start()
    deadline = time.monotonic() + GRACEFUL_SHUTDOWN_S + 2
    for proc, _ in children:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voiceplatform.webserver",
        description="Serve the platform (HTTP and websockets) with uvicorn in WEB_PROCESSES processes.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=0, help="server processes (default: WEB_PROCESSES)")
    parser.add_argument("--serve-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535 (every process binds the same port)")
    processes = args.processes or settings.WEB_PROCESSES
    if processes < 1:
        parser.error("--processes must be at least 1")
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    if args.serve_one:
        serve_one(args.host, args.port, reuse_port=reuse_port)
        return 0
    if processes == 1:
        serve_one(args.host, args.port, reuse_port=False)
        return 0
    if not reuse_port:  # uvicorn's workers on one shared socket
        import uvicorn

        uvicorn.run(ASGI_APP, workers=processes, **_uvicorn_options(args.host, args.port))
        return 0
    return supervise(args.host, args.port, processes)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
    from django.core.exceptions import ImproperlyConfigured

    try:
        sys.exit(main())
    except ImproperlyConfigured as exc:  # a malformed env variable: one line, as manage.py prints it
        print(f"Configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
