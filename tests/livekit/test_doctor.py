"""`manage.py doctor` against the tier's real LiveKit server, worker, webhooks and Celery.

Healthy: the server answers, the key pair is accepted, a dispatch probe is taken by the
running worker (which joins the probe room and leaves, touching no session), and the
probe room's own events come back as signed webhooks. A wrong secret is named as such
and the command exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.platform import BASE_DIR

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(240)]


def _doctor(lk: Any, **env: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "manage.py", "doctor", "--json", "--probe-timeout", "30"],
        cwd=BASE_DIR,
        env={**lk.env, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_the_doctor_probes_the_real_server_and_names_a_wrong_secret(lk) -> None:
    code, report, stderr = _doctor(lk)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 0, (report, stderr[-2000:])
    for name in ("livekit server", "livekit credentials", "agent worker", "livekit webhooks", "celery"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "joined the probe room" in checks["agent worker"]["detail"]
    assert "participant_joined" in checks["livekit webhooks"]["detail"]
    assert checks["model endpoint: default"]["status"] == "ok"  # the lk-recorded agent's endpoint
    # The probe touched no session: none was opened for its room.
    rows = lk.query("SELECT count(*) FROM sessions_app_voicesession WHERE room_name LIKE %s", ("doctor-probe-%",))
    assert rows[0][0] == 0

    code, report, _ = _doctor(lk, LIVEKIT_API_SECRET="not-the-servers-secret-" + "x" * 16)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and report["ok"] is False
    assert checks["livekit server"]["status"] == "ok"
    assert checks["livekit credentials"]["status"] == "fail"
    assert (
        "unauthenticated" in checks["livekit credentials"]["detail"].lower()
        or "401" in checks["livekit credentials"]["detail"]
    )
    assert checks["agent worker"]["status"] == "fail" and "not probed" in checks["agent worker"]["detail"]
