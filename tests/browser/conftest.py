"""Shared Playwright fixtures: Debian's Chromium, the real ASGI app served as in production.

- `chromium_path`: Debian's Chromium (never `playwright install`). Missing → the test
  fails under CI (`.ci/run` installs it) and skips only on a developer machine.
- `launch_chromium(playwright)`: the browser with the flags every browser test uses.
- `served_platform`: gunicorn with a uvicorn worker (voiceplatform.webserver) serving `voiceplatform.asgi:application` on loopback, on its
  own freshly migrated database (a PostgreSQL database next to `DATABASE_URL`, or SQLite
  under a temporary `DATA_DIR`) and the configured Redis. Its `orm(code)` runs Python in
  a helper process on that same database, so a test records turns through the real
  services (`turn_record`, `session_transition`) while the page watches.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.ports import free_port
from voiceplatform.webserver import web_server_command

BASE_DIR = Path(__file__).resolve().parents[2]
ARTIFACTS = BASE_DIR / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SERVER_START_TIMEOUT_S = 90

# Runs in the helper process: one JSON request per line ({"code": "..."}), one JSON answer
# per line. The code may set `result` to anything JSON can carry.
_ORM_DRIVER = r"""
import json, sys, traceback
import django
django.setup()
namespace = {}
for line in sys.stdin:
    request = json.loads(line)
    namespace.pop("result", None)
    try:
        exec(request["code"], namespace)
        answer = {"ok": True, "result": namespace.get("result")}
    except Exception:
        answer = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.write(json.dumps(answer, default=str) + "\n")
    sys.stdout.flush()
"""


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        message = "Debian's Chromium is not installed (apt-get install -y chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + "; browser tests skip only outside CI")
    return path


def launch_chromium(playwright: Any, executable: str, extra_args: list[str] | None = None) -> Any:
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=CHROMIUM_FLAGS + list(extra_args or [])
    )


@dataclass
class ServedPlatform:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    driver: subprocess.Popen | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def orm(self, code: str) -> Any:
        """Run `code` against the served database (in the helper process); returns `result`."""
        assert self.driver is not None and self.driver.stdin and self.driver.stdout
        self.driver.stdin.write(json.dumps({"code": code}) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError("the ORM helper process exited")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError("ORM helper failed:\n" + answer["error"])
        return answer["result"]


def _postgres_database(url: str, suffix: str) -> tuple[str, str]:
    import psycopg

    parts = urlsplit(url)
    name = (parts.path.lstrip("/") or "voiceplatform") + suffix
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return parts._replace(path="/" + name).geturl(), name


def _drop_postgres_database(url: str, name: str) -> None:
    import psycopg

    admin_url = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serve_platform(
    data_dir: Path, *, name: str, seed: str = "", env_extra: dict[str, str] | None = None
) -> ServedPlatform:
    """Migrate a fresh database, seed it, start the web server and the ORM helper on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "DJANGO_SETTINGS_MODULE"))}
    env.update({"DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "DJANGO_DEBUG": "false", "LOG_LEVEL": "WARNING"})
    env["DJANGO_SETTINGS_MODULE"] = "voiceplatform.settings"
    env.update(env_extra or {})
    database_url = os.environ.get("DATABASE_URL", "")
    pg_name = None
    if database_url.startswith(("postgres", "pgsql")):
        env["DATABASE_URL"], pg_name = _postgres_database(database_url, f"_{name}_browser")
    else:
        env.pop("DATABASE_URL", None)  # SQLite under DATA_DIR
    for args in (["migrate", "--noinput"], ["shell", "-c", seed or "pass"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"

    process, port, log_path = start_web_server(env, data_dir, name=name)
    site = ServedPlatform(base_url=f"http://127.0.0.1:{port}", env=env, process=process, log_path=log_path)
    site.extra["pg_name"] = pg_name
    site.extra["database_url"] = database_url
    site.driver = subprocess.Popen(
        [sys.executable, "-c", _ORM_DRIVER],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return site


def start_web_server(env: dict[str, str], data_dir: Path, *, name: str) -> tuple[subprocess.Popen, int, Path]:
    """The web server as in production (one worker) on a free loopback port, serving once
    this returns; in a process group of its own, so a test can SIGKILL all of it."""
    port = free_port()
    log_path = data_dir / f"web-{name}.log"
    log = open(log_path, "w")  # kept open for the server's lifetime
    process = subprocess.Popen(
        web_server_command(host="127.0.0.1", port=port, processes=1),
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the web server ({name}) exited:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port, log_path
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(
                    f"the web server ({name}) did not listen within {SERVER_START_TIMEOUT_S} s:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.2)


def stop_platform(site: ServedPlatform) -> None:
    for process in (site.driver, site.process):
        if process is None:
            continue
        if process is site.driver and process.stdin:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    if not os.environ.get("REDIS_URL"):
        subprocess.run(
            [sys.executable, "-m", "voiceplatform.embedded_redis", "stop"],
            cwd=BASE_DIR,
            env=site.env,
            capture_output=True,
        )
    if site.extra.get("pg_name"):
        _drop_postgres_database(site.extra["database_url"], site.extra["pg_name"])


def save_screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
