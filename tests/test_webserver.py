"""The web server as the Procfile starts it: gunicorn managing uvicorn workers.

Real subprocesses on loopback; the worker processes are read from /proc (Linux, where the
platform is deployed). What an operator relies on: N workers serve, a killed worker is
replaced, SIGHUP replaces every worker without refusing a request, a worker is recycled
after WEB_MAX_REQUESTS, SIGTERM stops everything, and a taken port or a malformed
setting stops the server with a message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.browser.conftest import free_port
from tests.waiting import wait_until
from voiceplatform.webserver import web_server_command

BASE_DIR = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path("/proc").exists(), reason="reads processes from Linux's /proc")


def _start(port: int, processes: int, **env: str) -> subprocess.Popen:
    cmd = web_server_command(host="127.0.0.1", port=port, processes=processes)
    return subprocess.Popen(
        cmd, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(64)


def _serving(server: subprocess.Popen, port: int, workers: int) -> set[int]:
    """The worker pids once `workers` of them run and the port answers."""

    def ready() -> set[int] | None:
        if server.poll() is not None:
            raise AssertionError(f"server exited {server.returncode}: {server.stderr.read()}")
        kids = _children(server.pid)
        if len(kids) != workers:
            return None
        try:
            return kids if _get(port).startswith(b"HTTP/1.1 200") else None
        except OSError:
            return None

    return wait_until(ready, what=f"{workers} serving workers", timeout=60.0, interval=0.2)


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")


def test_workers_serve_and_sigterm_stops_every_process():
    port = free_port()
    server = _start(port, processes=2)
    kids = _serving(server, port, 2)
    _stop(server)
    assert server.returncode == 0
    assert all(_gone(kid) for kid in kids)


def test_a_killed_worker_is_replaced():
    port = free_port()
    server = _start(port, processes=2)
    try:
        kids = _serving(server, port, 2)
        victim = min(kids)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in _children(server.pid) and len(_children(server.pid)) == 2,
            what="a new one",
            timeout=60.0,
            interval=0.2,
        )
        assert _get(port).startswith(b"HTTP/1.1 200")
    finally:
        _stop(server)


def test_sighup_replaces_every_worker_and_keeps_answering():
    port = free_port()
    server = _start(port, processes=2)
    try:
        before = _serving(server, port, 2)
        server.send_signal(signal.SIGHUP)
        refused = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if not _get(port).startswith(b"HTTP/1.1 200"):
                    refused += 1
            except OSError:
                refused += 1
            now = _children(server.pid)
            if len(now) == 2 and not (now & before):
                break
            time.sleep(0.05)
        assert not (_children(server.pid) & before), "the old workers are still running"
        assert refused == 0
    finally:
        _stop(server)


def test_a_worker_is_recycled_after_web_max_requests():
    port = free_port()
    server = _start(port, processes=1, WEB_MAX_REQUESTS="10")
    try:
        (first,) = _serving(server, port, 1)
        for _ in range(30):  # more than 10 + 10 % jitter: the first worker must have been replaced
            wait_until(lambda: _try_get(port), what="an answer", timeout=30, interval=0.2)
        assert first not in _children(server.pid)
    finally:
        _stop(server)


def _try_get(port: int) -> bool:
    try:
        return _get(port).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_a_taken_port_stops_the_server_with_an_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _start(port, processes=2)
        try:
            server.wait(60)
        finally:
            _stop(server)
        assert server.returncode != 0
        assert "Connection in use" in server.stderr.read()


def test_a_malformed_setting_is_one_line_not_a_traceback():
    port = free_port()
    result = subprocess.run(
        web_server_command(host="127.0.0.1", port=port),
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "WEB_PROCESSES": "many"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "Configuration error:" in result.stderr and "WEB_PROCESSES" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_add_up_every_worker(tmp_path: Path):
    """A scrape lands on one worker; it must report what all of them counted."""
    port = free_port()
    server = _start(port, processes=2, DATA_DIR=str(tmp_path))
    try:
        workers = _serving(server, port, 2)
        before = _healthz_count(port)
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                sock.recv(64)
        time.sleep(0.5)  # the last responses are counted after they are sent
        counts = [_healthz_count(port) - before for _ in range(6)]
        assert all(count == 40 for count in counts), counts
        # Both workers wrote samples (not just one that happened to take every request).
        files = list((tmp_path / "prometheus").glob("web-*/counter_*.db"))
        assert {int(f.stem.split("_")[1]) for f in files} >= workers
    finally:
        _stop(server)
    assert not list((tmp_path / "prometheus").glob("web-*/*.db"))  # gone with the server


def _healthz_count(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("django_http_requests_total_by_view_transport_method_total{") and 'view="healthz"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_its_own_lines_use_the_platforms_log_format():
    """With LOG_FORMAT=json every line the server writes is JSON (gunicorn's own too), and
    the stop leaves no harmless-but-alarming "Error while closing socket" line."""
    import json

    port = free_port()
    server = _start(port, processes=2, LOG_FORMAT="json")
    _serving(server, port, 2)
    _stop(server)
    lines = [line for line in server.stderr.read().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert {"gunicorn.error"} <= {r["logger"] for r in records}
    assert any("Booting worker" in r["message"] for r in records)
    assert not any("Error while closing socket" in r["message"] for r in records)
