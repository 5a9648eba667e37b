"""A LiveKit server on this machine, for `make demo` and the livekit test tier.

The server is the pinned release that `make livekit-server` builds from the Go module
proxy (deploy/livekit/build-server.sh), or a `livekit-server` on PATH. Its configuration
is the project's deploy/livekit/livekit.yaml; what differs per run is filled in here:

- the API key and secret go through the LIVEKIT_KEYS environment variable (never argv,
  where `ps` would show them, and never a file in the repository),
- the webhook URL points at this run's web server,
- the HTTP and UDP ports and `rtc.node_ip` can be moved (tests, LIVEKIT_NODE_IP).

The rendered copy is written to $DATA_DIR/livekit/livekit.yaml (mode 0600).

LiveKit's SIP service (`make livekit-sip`, docs/telephony.md) runs beside it when its
binary is there: the server then gets a `redis:` section (the two talk through psrpc over
Redis, the platform's own Redis on a database of its own) and the SIP service a config
rendered to $DATA_DIR/livekit/sip.yaml (0600, it holds the API secret).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

BASE_DIR = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = BASE_DIR / "deploy" / "livekit" / "livekit.yaml"
BUILT_BINARY = BASE_DIR / "var" / "bin" / "livekit-server"
BUILT_SIP_BINARY = BASE_DIR / "var" / "bin" / "livekit-sip"
WEBHOOK_PATH = "/api/v1/livekit/webhook"
# The Redis database LiveKit's server and SIP service share (the platform's own Redis).
LIVEKIT_REDIS_DB = 3
# Variables the server reads by itself (urfave/cli EnvVars): never inherit them by accident.
_SERVER_ENV = ("LIVEKIT_CONFIG", "LIVEKIT_KEYS", "NODE_IP", "UDP_PORT", "REDIS_HOST", "REDIS_PASSWORD")


def _binary(variable: str, built: Path, name: str) -> Path | None:
    explicit = os.environ.get(variable, "")
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    if built.exists() and os.access(built, os.X_OK):
        return built
    found = shutil.which(name)
    return Path(found) if found else None


def server_binary() -> Path | None:
    """LIVEKIT_SERVER_BIN, else the built one in var/bin, else `livekit-server` on PATH."""
    return _binary("LIVEKIT_SERVER_BIN", BUILT_BINARY, "livekit-server")


def sip_binary() -> Path | None:
    """LIVEKIT_SIP_BIN, else the built one in var/bin (`make livekit-sip`), else `livekit-sip` on PATH."""
    return _binary("LIVEKIT_SIP_BIN", BUILT_SIP_BINARY, "livekit-sip")


@dataclass(frozen=True)
class RedisConfig:
    """Where the server and the SIP service meet: go-redis's address (host:port, or a unix
    socket's path), database and password."""

    address: str
    db: int = 0
    password: str = ""

    def section(self) -> dict[str, Any]:
        body: dict[str, Any] = {"address": self.address, "db": self.db}
        if self.password:
            body["password"] = self.password
        return body


def redis_config(url: str, db: int = LIVEKIT_REDIS_DB) -> RedisConfig:
    """The platform's REDIS_URL (redis://, or unix:// for the embedded one) as LiveKit's
    `redis:` section, on database `db` (LIVEKIT_REDIS_DB): LiveKit's keys never mix with
    Channels' and Celery's."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return RedisConfig(address=parsed.path, db=db, password=parsed.password or "")
    if parsed.scheme == "rediss":
        raise ValueError("LiveKit's SIP service is wired here for redis:// and unix:// only, not rediss://")
    return RedisConfig(
        address=f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}", db=db, password=parsed.password or ""
    )


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
    # Set when the SIP service runs beside the server (they talk through Redis).
    redis: RedisConfig | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class SipConfig:
    """LiveKit's SIP service (livekit-sip v1.8.0), a WebRTC client of the server like an agent."""

    server: ServerConfig  # with its `redis` set: the SIP service uses the server's Redis
    sip_port: int = 5060
    # One RTP port per call leg; a "start-end" string (a start:/end: mapping is ignored).
    rtp_ports: str = "10000-10100"
    health_port: int = 8089
    # The address announced in Contact and SDP (the caller sends RTP there); livekit-sip
    # announces the machine's first non-loopback IPv4 when it is empty.
    nat_ip: str = ""
    log_level: str = "info"
    # Over this share of the machine's CPU the SIP service refuses new calls ("cpu
    # exhausted"; livekit-sip's default 0.9, at most 1.0). None: its default.
    max_cpu_utilization: float | None = None

    def __post_init__(self) -> None:
        if self.server.redis is None:
            raise ValueError("LiveKit's SIP service needs a server with a `redis` section")

    @property
    def redis(self) -> RedisConfig:
        assert self.server.redis is not None
        return self.server.redis


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
    if config.redis is not None:
        body["redis"] = config.redis.section()
    header = "# Rendered from deploy/livekit/livekit.yaml by voiceplatform/livekit_dev.py: do not edit.\n"
    return _write_private(data_dir / "livekit" / "livekit.yaml", header, body)


def _write_private(path: Path, header: str, body: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(header)
        yaml.safe_dump(body, handle, sort_keys=False)
    return path


def render_sip_config(config: SipConfig, data_dir: Path) -> Path:
    """$DATA_DIR/livekit/sip.yaml (0600): it holds the API secret, which livekit-sip reads
    from its config only (a --config-body flag would put it on the command line)."""
    body: dict[str, Any] = {
        "api_key": config.server.api_key,
        "api_secret": config.server.api_secret,
        "ws_url": config.server.url,
        "redis": config.redis.section(),
        "sip_port": config.sip_port,
        "rtp_port": config.rtp_ports,
        "health_port": config.health_port,
        "logging": {"level": config.log_level},
    }
    if config.nat_ip:
        body["nat_1_to_1_ip"] = config.nat_ip
    if config.max_cpu_utilization is not None:
        body["max_cpu_utilization"] = config.max_cpu_utilization
    header = "# Rendered by voiceplatform/livekit_dev.py for LiveKit's SIP service: do not edit.\n"
    return _write_private(data_dir / "livekit" / "sip.yaml", header, body)


def sip_command(binary: Path, config_path: Path) -> list[str]:
    return [str(binary), "--config", str(config_path)]


def sip_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Without the variables livekit-sip would read instead of its --config file."""
    return {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("SIP_CONFIG")}


def sip_wait_ready(config: SipConfig, timeout: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    """The SIP service's health port answers 200 (it is connected to the server and Redis)."""
    return _wait_http(config.health_port, timeout, proc, lambda head: head[8:13] == b" 200 ")


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
    return _wait_http(port, timeout, proc, lambda head: True)


def _wait_http(port: int, timeout: float, proc: subprocess.Popen[Any] | None, accept: Callable[[bytes], bool]) -> bool:
    """Until `timeout`: 127.0.0.1:port answers `GET /` with an HTTP status line `accept` takes
    (False at once if `proc` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                head = sock.recv(64)
                if head.startswith(b"HTTP/1.") and accept(head):
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
