"""The demo's process supervisor: whole process trees stop, busy ports are refused."""

from __future__ import annotations

import io
import os
import socket
import sys
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from agents_app.runtime.demo.supervisor import Supervisor, port_free


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_stopping_kills_the_children_of_each_process_too(tmp_path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    out = io.StringIO()
    supervisor = Supervisor(out, colour=False)
    # A leader that ignores SIGTERM and has a child of its own: both must go.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = supervisor.start("tree", [sys.executable, "-c", script], dict(os.environ))
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert _alive(proc.pid) and _alive(grandchild)
    started = time.monotonic()
    supervisor.stop_all()
    assert not _alive(proc.pid)
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the grandchild outlived the demo"
    assert time.monotonic() - started < 30
    assert "tree" in out.getvalue() and "ready" in out.getvalue()
    assert supervisor.start("late", [sys.executable, "-c", "pass"], dict(os.environ)) is None


def test_output_lines_carry_the_process_name() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, colour=False)
    proc = supervisor.start("echo", [sys.executable, "-c", "print('hello from child')"], dict(os.environ))
    proc.wait(timeout=20)
    time.sleep(0.3)
    supervisor.stop_all()
    assert any(
        line.split("|")[0].split()[-1] == "echo" and "hello from child" in line for line in out.getvalue().splitlines()
    )


@pytest.mark.django_db
def test_demo_refuses_to_start_when_its_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        with pytest.raises(CommandError, match="already in use"):
            call_command("demo", "--port", str(port), "--no-traffic", "--duration", "1")
