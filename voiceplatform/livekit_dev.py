"""A LiveKit server on this machine, for `make demo` and the livekit test tier.

The server is the pinned release that `make livekit-server` builds from the Go module
proxy (deploy/livekit/build-server.sh), or a `livekit-server` on PATH. Its configuration
is the project's deploy/livekit/livekit.yaml; what differs per run is filled in here:

- the API key and secret go through the LIVEKIT_KEYS environment variable (never argv,
  where `ps` would show them, and never a file in the repository),
- the webhook URL points at this run's web server,
- the HTTP and UDP ports and `rtc.node_ip` can be moved (tests, LIVEKIT_NODE_IP).

The rendered copy is written to $DATA_DIR/livekit/livekit.yaml (mode 0600).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BASE_DIR = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = BASE_DIR / "deploy" / "livekit" / "livekit.yaml"
BUILT_BINARY = BASE_DIR / "var" / "bin" / "livekit-server"
WEBHOOK_PATH = "/api/v1/livekit/webhook"
# Variables the server reads by itself (urfave/cli EnvVars): never inherit them by accident.
_SERVER_ENV = ("LIVEKIT_CONFIG", "LIVEKIT_KEYS", "NODE_IP", "UDP_PORT", "REDIS_HOST", "REDIS_PASSWORD")


def server_binary() -> Path | None:
    """LIVEKIT_SERVER_BIN, else the built one in var/bin, else `livekit-server` on PATH."""
    explicit = os.environ.get("LIVEKIT_SERVER_BIN", "")
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    if BUILT_BINARY.exists() and os.access(BUILT_BINARY, os.X_OK):
        return BUILT_BINARY
    found = shutil.which("livekit-server")
    return Path(found) if found else None


def server_version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().rsplit(" ", 1)[-1] or "unknown"


def dev_api_secret(data_dir: Path) -> str:
    """A random secret kept in $DATA_DIR/livekit/api-secret (0600), made on first use.

    Used by the demo's LiveKit server and by the local transport when LIVEKIT_API_SECRET
    is not set: a fixed, published secret would let anyone mint caller tokens or sign
    webhooks.
    """
    path = data_dir / "livekit" / "api-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        try:
            # O_EXCL: the processes of one deployment starting together agree on one secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text().strip()
            if len(value) >= 32:
                return value
            time.sleep(0.02)  # another process is writing it
            continue
        value = secrets.token_urlsafe(36)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        return value
    raise RuntimeError(f"{path} holds no usable secret; delete it to make a new one")


@dataclass(frozen=True)
class ServerConfig:
    api_key: str
    api_secret: str
    webhook_url: str
    port: int = 7880
    udp_port: int = 7882
    node_ip: str = ""
    log_level: str = "info"
    # Tests: more webhook receivers (a tap that keeps the signed deliveries) and shorter
    # room timeouts than deploy/livekit/livekit.yaml's.
    extra_webhook_urls: tuple[str, ...] = ()
    departure_timeout: int | None = None
    empty_timeout: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def render_config(config: ServerConfig, data_dir: Path) -> Path:
    """The project's YAML with this run's ports, node address, webhook URL and key name."""
    body: dict[str, Any] = yaml.safe_load(CONFIG_TEMPLATE.read_text())
    body["port"] = config.port
    body["rtc"]["udp_port"] = config.udp_port
    if config.node_ip:
        body["rtc"]["node_ip"] = config.node_ip
    body["webhook"] = {"api_key": config.api_key, "urls": [config.webhook_url, *config.extra_webhook_urls]}
    if config.departure_timeout is not None:
        body["room"]["departure_timeout"] = config.departure_timeout
    if config.empty_timeout is not None:
        body["room"]["empty_timeout"] = config.empty_timeout
    body.setdefault("logging", {})["level"] = config.log_level
    path = data_dir / "livekit" / "livekit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Rendered from deploy/livekit/livekit.yaml by voiceplatform/livekit_dev.py: do not edit.\n")
        yaml.safe_dump(body, handle, sort_keys=False)
    return path


def server_command(binary: Path, config_path: Path) -> list[str]:
    return [str(binary), "--config", str(config_path)]


def server_env(config: ServerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k not in _SERVER_ENV}
    env["LIVEKIT_KEYS"] = f"{config.api_key}: {config.api_secret}"
    return env


def platform_env(config: ServerConfig) -> dict[str, str]:
    """What the platform's processes need to use this server."""
    return {"LIVEKIT_URL": config.url, "LIVEKIT_API_KEY": config.api_key, "LIVEKIT_API_SECRET": config.api_secret}


def wait_ready(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    """The server answers HTTP on 127.0.0.1:port (its root path says OK)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1."):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def udp_port_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether the media port is free on every interface (the server binds it there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
