"""`make demo` with a built livekit-server and no LIVEKIT_URL: it starts the real server.

The demo runs as a person runs it (SQLite and the embedded Redis in its own data folder,
the project's deploy/livekit/livekit.yaml on its fixed ports), its banner names the
transport, its first simulated call completes through the server, its doctor finds the
deployment ready for calls, and Ctrl-C (SIGTERM) leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.platform import BASE_DIR, free_port, pid_alive

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(300)]


def test_the_demo_starts_the_real_server_and_calls_through_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_URL", "LIVEKIT_API", "PYTEST"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1", "AGENT_HEALTH_PORT": "0"})
    env.pop("DATABASE_URL", None)  # a person's first run: SQLite in the data folder
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "demo.log"
    port = free_port()
    with open(log_path, "w") as log:
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--port", str(port), "--scenarios", "basic", "--pause", "600"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        text = ""
        while time.monotonic() < deadline and demo.poll() is None:
            text = log_path.read_text(errors="replace")
            if (
                "done: 1/1 completed" in text and "doctor: " in text
            ) or "FAILED: " in text:  # the caller's note, not LiveKit's JS_FAILED
                break
            time.sleep(1)
        assert "Transport:  LiveKit server 1.13.5 at ws://127.0.0.1:7880" in text, text[-3000:]
        assert "registered with LiveKit" in text
        assert "done: 1/1 completed" in text, text[-5000:]
        # The demo ran `manage.py doctor` once the worker and Celery were up: all a call needs works.
        assert "doctor: ready for calls" in text, text[-5000:]
    finally:
        if demo.poll() is None:
            os.kill(demo.pid, signal.SIGTERM)
        try:
            code = demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
    text = log_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    children = [int(p) for p in re.findall(r"started \(pid (\d+)\)", text)]
    assert children and not [p for p in children if pid_alive(p)], "a demo process outlived Ctrl-C"
