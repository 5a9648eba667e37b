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
from tests.waiting import wait_until
from voiceplatform import livekit_dev

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(300)]


def test_the_demo_starts_the_real_server_and_calls_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
        if livekit_dev.sip_binary() is not None:
            stored = _call_the_demo_by_phone(text, env, tmp_path)
            with capsys.disabled():  # shown in every run: the demo answered a phone
                print(f"\ndemo phone call: {stored}")
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


def _call_the_demo_by_phone(text: str, env: dict[str, str], tmp_path: Path) -> str:
    """The banner's SIP URI, dialled from a SIP phone on this machine, as a person would with
    a softphone: the demo agent answers and greets, and the call is a phone session with turns."""
    from agents_app.runtime.simulator import sip_phone
    from tests.livekit.test_phone_calls import _speech_spans

    found = re.search(r"Phone:\s+(sip:\S+)", text)
    assert found, text[-3000:]
    sip_phone.configure(codecs=("PCMU/8000", "PCMA/8000"))  # as tests/livekit/test_phone_calls.py does
    with sip_phone.SipPhone(bind="127.0.0.1", user="+15557650000") as phone:
        call = phone.call(found.group(1))
        call.expect_confirmed(60)
        call.start_recording(tmp_path / "demo-heard.wav")
        wait_until(lambda: _speech_spans(*call.heard_so_far()), what="the demo's greeting on the phone", timeout=30)
        call.hangup()
    shell = (
        "from sessions_app.models import VoiceSession\n"
        "s = VoiceSession.objects.filter(channel='phone').order_by('-created_at').first()\n"
        "print('PHONE', s and s.agent.slug, s and s.caller_id, s and s.turns.count())\n"
    )

    def stored() -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", shell], cwd=BASE_DIR, env=env, capture_output=True, text=True
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("PHONE ")), "")
        return line if line.endswith(tuple("123456789")) else ""

    found_session = wait_until(stored, what="the phone session with its greeting turn", timeout=30)
    assert found_session.startswith("PHONE demo "), found_session
    return found_session
