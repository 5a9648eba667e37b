"""voiceplatform.webserver: N uvicorn processes, each on its own SO_REUSEPORT socket.

The servers run as real subprocesses; which process holds which socket is read from /proc
(Linux, where the platform is deployed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.conftest import free_port
from voiceplatform.webserver import STARTUP_GRACE_S, web_server_command

BASE_DIR = Path(__file__).resolve().parent.parent
LISTEN, ESTABLISHED = "0A", "01"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc")


def _start(port: int, processes: int) -> subprocess.Popen:
    cmd = web_server_command(host="127.0.0.1", port=port, processes=processes)
    return subprocess.Popen(cmd, cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of this machine's TCP sockets with local `port` in `state`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _wait_until(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _listening_children(server: subprocess.Popen, port: int, count: int) -> list[int]:
    def ready() -> list[int] | None:
        if server.poll() is not None:
            raise AssertionError(f"server exited {server.returncode}: {server.stderr.read()}")
        kids = _children(server.pid)
        listening = _sockets(port, LISTEN)
        holders = [k for k in kids if _socket_inodes(k) & listening]
        return holders if len(holders) == count else None

    return _wait_until(ready, what=f"{count} listening server processes")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _get(port: int, conn: socket.socket | None = None) -> bytes:
    sock = conn or socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock.recv(64)


def test_each_process_listens_on_its_own_socket_and_connections_spread_over_them():
    port = free_port()
    server = _start(port, processes=2)
    try:
        kids = _listening_children(server, port, 2)
        assert len(_sockets(port, LISTEN)) == 2  # two sockets on one port: SO_REUSEPORT
        # 16 keep-alive connections opened at once (an API client's pool). With one shared
        # socket the first process to wake could take them all; here each gets some.
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
        try:
            for conn in conns:
                assert _get(port, conn).startswith(b"HTTP/1.1 200")
            established = _sockets(port, ESTABLISHED)
            per_process = [len(_socket_inodes(k) & established) for k in kids]
            assert sum(per_process) == 16 and min(per_process) > 0, per_process
        finally:
            for conn in conns:
                conn.close()
    finally:
        _stop(server)
    assert server.returncode == 0


def test_sigterm_stops_every_process():
    port = free_port()
    server = _start(port, processes=2)
    kids = _listening_children(server, port, 2)
    _stop(server)
    assert server.returncode == 0
    for kid in kids:
        assert not Path(f"/proc/{kid}").exists() or "Z" in Path(f"/proc/{kid}/stat").read_text().split()[2]


def test_a_process_that_dies_later_is_replaced():
    port = free_port()
    server = _start(port, processes=2)
    try:
        kids = _listening_children(server, port, 2)
        time.sleep(STARTUP_GRACE_S + 0.5)  # past the startup grace: a crash now is replaced
        os.kill(kids[0], signal.SIGKILL)
        _wait_until(lambda: set(_listening_children(server, port, 2)) - set(kids), what="a replacement process")
        assert _get(port).startswith(b"HTTP/1.1 200")
    finally:
        _stop(server)


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
        assert f"cannot listen on 127.0.0.1:{port}" in server.stderr.read()


def test_a_bad_port_is_refused_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "voiceplatform.webserver", "--port", "0"], cwd=BASE_DIR, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--port must be between 1 and 65535" in result.stderr


def test_a_malformed_setting_is_one_line_not_a_traceback():
    env = {**os.environ, "WEB_PROCESSES": "many"}
    result = subprocess.run(
        [sys.executable, "-m", "voiceplatform.webserver", "--port", "8999"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("Configuration error:") and "WEB_PROCESSES" in result.stderr
    assert "Traceback" not in result.stderr
