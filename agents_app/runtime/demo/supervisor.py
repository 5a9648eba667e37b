"""The demo's process supervisor: each child in its own process group with prefixed,
coloured output, whole trees stopped (SIGTERM, then SIGKILL after a grace period), and
the small waits the demo needs (a free port, a listening port, a readiness check).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from django.conf import settings

GRACE_SECONDS = 10.0
COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")
RESET = "\033[0m"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.25)
    return False


def wait_ready(ready: Callable[[], bool], stop: threading.Event, timeout: float) -> bool:
    """Wait until `ready()` or `timeout` s have passed (go on either way); False if the demo
    is stopping meanwhile."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        if stop.wait(0.5):
            return False
    return True


class RestartBudget:
    """At most `limit` restarts in any `window_s` seconds (a crash loop stops the demo)."""

    def __init__(self, *, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: list[float] = []

    def allow(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class Supervisor:
    """Starts child processes in their own process groups and stops whole trees."""

    def __init__(self, out: IO[str], *, colour: bool) -> None:
        self.out = out
        self.colour = colour
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._colours = itertools.cycle(COLOURS)
        self._width = 8
        self._watches: list[tuple[str, str, threading.Event]] = []

    def say(self, name: str, line: str, colour: str = "") -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self._width}}|"
        if self.colour and colour:
            prefix = f"{colour}{prefix}{RESET}"
        with self._lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str] | None:
        with self._lock:
            if self.stopping.is_set():  # never start anything once the shutdown began
                return None
            colour = next(self._colours)
            proc = self._spawn(argv, env)
            self.procs[name] = proc
        threading.Thread(target=self._pump, args=(name, proc, colour), daemon=True).start()
        self.say(name, f"started (pid {proc.pid}): {' '.join(argv[1:] if argv[0] == sys.executable else argv)}", colour)
        return proc

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(settings.BASE_DIR),
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: we can kill the whole tree
        )

    def _pump(self, name: str, proc: subprocess.Popen[str], colour: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.say(name, line.rstrip("\n"), colour)
            for watched, text, event in self._watches:
                if watched == name and text in line:
                    event.set()

    def forget(self, name: str, proc: subprocess.Popen[str]) -> None:
        """Drop a process that finished on purpose (a traffic call), so it is never 'dead'."""
        with self._lock:
            if self.procs.get(name) is proc:
                del self.procs[name]

    def dead(self) -> list[tuple[str, int]]:
        with self._lock:  # traffic threads start processes while the main loop watches
            procs = list(self.procs.items())
        return [(name, proc.returncode) for name, proc in procs if proc.poll() is not None]

    @staticmethod
    def kill_group(proc: subprocess.Popen[str], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self, *, last: tuple[str, ...] = ()) -> None:
        """SIGTERM every process group, then SIGKILL what outlives the grace period.

        Those named in `last` are stopped after the others are gone (the LiveKit server
        waits for its participants to leave before it exits).
        """
        with self._lock:
            self.stopping.set()
            procs = list(self.procs.items())
        first = [(n, p) for n, p in procs if n not in last]
        then = [(n, p) for n, p in procs if n in last]
        for group in (first, then):
            for _, proc in group:
                self.kill_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_SECONDS
            for name, proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(name, "did not stop in time: killing its process group")
                # Children of the leader (job processes, Celery's pool) may outlive it.
                self.kill_group(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def watch(self, name: str, text: str) -> threading.Event:
        """An event set when a line of `name`'s output contains `text`."""
        event = threading.Event()
        with self._lock:
            self._watches.append((name, text, event))
        return event
