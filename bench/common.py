"""What several benchmarks need: a free loopback port, a percentile of measured values, and
stopping the servers they started."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    """A measured value at rank round(q% of n) (q in 0..100), to 0.01; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))], 2)


def stop(*procs: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM each process, then SIGKILL those still running after `grace` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
