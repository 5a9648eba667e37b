"""A network namespace with a test address, for WebRTC against a local LiveKit server.

WebRTC stacks (libwebrtc in the Python rtc SDK and in Chromium) gather no ICE candidates on
loopback interfaces, and traffic on these machines may go only to loopback or to test hosts
in namespaces the tests make. So the livekit test tier (tests/livekit/run_tier.py) and
`bench/voice_to_voice.py --transport livekit` run themselves inside a namespace that has
`lo` up and a veth pair, one end with a test address (10.213.N.1/24): the address WebRTC
uses, and nothing outside can be reached.

Inside, PostgreSQL is reached through its unix socket (TCP to the host's 127.0.0.1 is
outside the namespace: `namespace_database_url`), and a process that needs Redis runs the
embedded one (leave REDIS_URL unset). `run_inside` makes the namespace, runs a command in
it with `NETNS_ADDRESS` set to the address, kills whatever is left in it and deletes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

PG_SOCKET_DIR = "/var/run/postgresql"
# Set inside the namespace to its test address: a process that sees it is already inside.
ADDRESS_ENV = "NETNS_ADDRESS"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


def missing() -> str:
    """Why a namespace cannot be made here ('' when it can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian's iproute2) to make a network namespace"
    if os.geteuid() != 0:
        return "making a network namespace needs root (or CAP_SYS_ADMIN)"
    return ""


def namespace_database_url(url: str) -> str:
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
    """Make namespace `name` with lo up and a veth pair; returns its address 10.213.`index`.1."""
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
    """Kill every process left in the namespace, then delete it."""
    for pid in _run("ip", "netns", "pids", name).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "del", name)


def namespace_env(env: dict[str, str], address: str) -> dict[str, str]:
    """`env` for a process inside the namespace: the address, PostgreSQL on its unix socket,
    no host Redis (unreachable: the embedded one starts instead), no LiveKit URL."""
    out = dict(env)
    out[ADDRESS_ENV] = address
    out["DATABASE_URL"] = namespace_database_url(out.get("DATABASE_URL", ""))
    out.pop("REDIS_URL", None)
    out.pop("LIVEKIT_URL", None)
    return out


def run_inside(prefix: str, command: list[str], *, env: dict[str, str], cwd: Path, **popen: Any) -> int:
    """Run `command` in a namespace of its own (named `prefix` + pid) with `namespace_env(env)`;
    returns its exit code. Raises RuntimeError when the namespace cannot be made."""
    name = f"{prefix}{os.getpid()}"
    index = 20 + os.getpid() % 200
    try:
        address = make_namespace(name, index)
    except RuntimeError:
        remove_namespace(name)
        raise
    try:
        print(f"==> network namespace {name} ({address})", file=sys.stderr, flush=True)
        return subprocess.call(
            ["ip", "netns", "exec", name, *command], cwd=cwd, env=namespace_env(env, address), **popen
        )
    finally:
        remove_namespace(name)  # kills what is left inside: servers, the embedded Redis
