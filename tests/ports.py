"""A free TCP port on loopback, for the servers the tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    """A UDP port free on every interface (SIP signalling binds 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def free_udp_range(count: int, start: int = 20000, stop: int = 60000) -> int:
    """The first port of `count` consecutive UDP ports free on every interface (RTP)."""
    port = start
    while port + count <= stop:
        for offset in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind(("0.0.0.0", port + offset))
                except OSError:
                    port += offset + 1
                    break
        else:
            return port
    raise RuntimeError(f"no {count} consecutive free UDP ports between {start} and {stop}")
