"""Start the platform as `make demo` does, in subprocesses, for end-to-end tests.

`manage.py demo --no-traffic` migrates, seeds and supervises the web server (gunicorn), a Celery worker
with beat and the local agent host. The processes are separate, so they share a real
database of their own: a dedicated PostgreSQL database created here when the tests run
on PostgreSQL, else a temporary SQLite file. Redis is the configured one (REDIS_URL) or a
private embedded Redis in a temporary data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings

from tests.ports import free_port

BASE_DIR = Path(settings.BASE_DIR)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.5)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


class Platform:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.agent_port = free_port()
        self.agent_metrics_port = free_port()  # the agent worker's own /metrics
        self.llm_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "demo.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.pg_db = ""
        self.env = self._env()

    # -- database ---------------------------------------------------------------------
    def _database_url(self) -> str:
        db = settings.DATABASES["default"]
        if db["ENGINE"].endswith("sqlite3"):
            return f"sqlite:///{self.tmp / 'e2e.sqlite3'}"
        import psycopg

        self.pg_db = f"vp_e2e_{uuid.uuid4().hex[:10]}"
        self._pg_admin(f'CREATE DATABASE "{self.pg_db}"')
        user = db.get("USER") or "postgres"
        auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
        del psycopg
        host = db.get("HOST") or "127.0.0.1"
        if host.startswith("/"):  # a unix socket directory (the livekit tier's network namespace)
            return f"postgres://{auth}@{quote(host, safe='')}/{self.pg_db}"
        return f"postgres://{auth}@{host}:{db.get('PORT') or 5432}/{self.pg_db}"

    def _pg_admin(self, sql: str) -> None:
        import psycopg

        db = settings.DATABASES["default"]
        with psycopg.connect(
            host=db.get("HOST") or "127.0.0.1",
            port=db.get("PORT") or 5432,
            user=db.get("USER") or "postgres",
            password=db.get("PASSWORD") or None,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the platform's database directly (what the processes stored)."""
        if self.pg_db:
            import psycopg

            db = settings.DATABASES["default"]
            with psycopg.connect(
                host=db.get("HOST") or "127.0.0.1",
                port=db.get("PORT") or 5432,
                user=db.get("USER") or "postgres",
                password=db.get("PASSWORD") or None,
                dbname=self.pg_db,
            ) as conn:
                return list(conn.execute(sql, params).fetchall())
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.tmp / "e2e.sqlite3")) as conn:
            return list(conn.execute(sql.replace("%s", "?"), params).fetchall())

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(
            {
                "DATABASE_URL": self._database_url(),
                "DATA_DIR": str(self.data_dir),
                "LOCAL_AGENT_PORT": str(self.agent_port),
                "AGENT_METRICS_PORT": str(self.agent_metrics_port),
                "LOCAL_LLM_PORT": str(self.llm_port),  # the demo agent's real model (manage.py runllm)
                "DJANGO_SETTINGS_MODULE": "voiceplatform.settings",
                "PYTHONUNBUFFERED": "1",
                # Our own channel-layer prefix: never mix with other runs on a shared Redis.
                "CHANNELS_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            }
        )
        env.pop("LIVEKIT_URL", None)
        return env

    # -- processes ----------------------------------------------------------------------
    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--no-traffic", "--transport", "local", "--port", str(self.port)],
            cwd=BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_port(self.port, 180, self.proc) or not wait_port(self.agent_port, 240, self.proc):
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"the platform did not start; demo log:\n{tail}")

    def child_pids(self) -> list[int]:
        if not self.log_path.exists():  # never started (only its database was used)
            return []
        return [int(p) for p in re.findall(r"started \(pid (\d+)\)", self.log_path.read_text(errors="replace"))]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def server_errors(self, limit: int = 80) -> str:
        """Tracebacks and 5xx lines the platform logged (to explain a failed call)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        picked = [
            line
            for i, line in enumerate(lines)
            if " 500 " in line
            or "ERROR" in line
            or "Traceback" in line
            or any("Traceback" in p for p in lines[max(0, i - 25) : i])
        ]
        return "\n".join(picked[-limit:])

    def stop(self) -> int | None:
        """SIGTERM to the demo, as Ctrl-C would; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        # Whatever happened, leave no process behind.
        for pid in self.child_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        from voiceplatform.embedded_redis import stop as redis_stop

        redis_stop(self.data_dir)
        if self.pg_db:
            with contextlib.suppress(Exception):
                self._pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')

    # -- simulator ------------------------------------------------------------------------
    def simulate(self, *args: str, timeout: float = 300) -> tuple[dict[str, Any], str]:
        """Run `simulate_calls … --json`; returns (the JSON summary, the whole stdout)."""
        run = subprocess.run(
            [sys.executable, "manage.py", "simulate_calls", "--json", "--base-url", self.base_url, *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = run.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"simulate_calls printed nothing (status {run.returncode}): {run.stderr[-3000:]}")
        try:
            summary = json.loads(lines[-1])
        except ValueError as exc:
            raise AssertionError(f"the last line of stdout is not JSON: {lines[-1]!r}\n{run.stderr[-3000:]}") from exc
        return summary, run.stdout + run.stderr

    def simulator_key(self) -> str:
        return json.loads((self.data_dir / "simulator-keys.json").read_text())["client"]


@contextlib.contextmanager
def started(platform: Platform):  # type: ignore[no-untyped-def]
    """Start the platform; whatever happens, leave no process behind."""
    try:
        platform.start()
        yield platform
    finally:
        platform.cleanup()


async def staff_http(base_url: str):  # type: ignore[no-untyped-def]
    """An aiohttp session logged in as the demo's support-staff user (admin login form).
    A 503 (the database briefly unavailable, e.g. just restarted) is retried after its
    Retry-After, as a person would try again."""
    import asyncio

    import aiohttp

    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    for _ in range(6):
        async with http.get(f"{base_url}/admin/login/") as page:
            html, status, retry_after = await page.text(), page.status, page.headers.get("Retry-After", "1")
        if status != 503:
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
            assert token, f"no CSRF token on the admin login page (HTTP {status})"
            form = {
                "username": "staff",
                "password": "voice-demo",
                "csrfmiddlewaretoken": token.group(1),
                "next": "/admin/",
            }
            async with http.post(
                f"{base_url}/admin/login/", data=form, headers={"Referer": f"{base_url}/admin/login/"}
            ) as done:
                status, retry_after = done.status, done.headers.get("Retry-After", "1")
            if status != 503:
                assert status in (200, 302), f"the staff login answered HTTP {status}"
                return http
        await asyncio.sleep(min(float(retry_after), 5.0))
    raise AssertionError("the staff login kept answering 503")


class StaffListener:
    """A support person's page (dashboard or session) held open by a test: a logged-in
    aiohttp session and the task that reads its websocket. Subclasses start both in
    `__aenter__`; leaving cancels the reader and closes the session."""

    def __init__(self) -> None:
        self._http: Any = None  # aiohttp.ClientSession, from staff_http()
        self._task: Any = None  # asyncio.Task reading the websocket

    async def close(self) -> None:
        import asyncio

        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
