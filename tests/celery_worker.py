"""Real Celery worker processes for tests, on the real Redis broker (REDIS_URL, else the
embedded one), isolated from anything else using that Redis database.

- Each `CeleryWorkers` pool has its own queue and its own keys for kombu's bookkeeping of
  unacknowledged messages, so its short visibility timeout can never "restore" somebody
  else's in-flight tasks sharing the Redis database. Its workers sweep for messages past
  the visibility timeout every second (kombu's default is every 100 s).
- `route_here=True` makes every task the worker sends go to that queue too (its default
  queue): the platform's chains (report → webhook delivery) stay inside the test. The test
  process sends with `apply_async(queue=workers.queue)`.
- The worker shares the test's database: the test database itself on PostgreSQL (tests
  using it need `django_db(transaction=True)`), a file of its own on SQLite.

Workers import this module (`-I tests.celery_worker`), which applies the isolation below
before the worker connects to the broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from tests.processes import stop_group
from voiceplatform.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[1]

# Inside a test worker (read at import, before the worker connects to the broker).
_KEY_PREFIX = os.environ.get("OPS_PROBE_KEY_PREFIX")
if _KEY_PREFIX:
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        "unacked_key": f"{_KEY_PREFIX}unacked",
        "unacked_index_key": f"{_KEY_PREFIX}unacked_index",
        "unacked_mutex_key": f"{_KEY_PREFIX}unacked_mutex",
        # kombu sweeps for messages past their visibility timeout every interval × throttle
        # seconds (10 × 10 by default, plus once at start-up); a test's short visibility
        # timeout wants a sweep every second.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
_DEFAULT_QUEUE = os.environ.get("OPS_PROBE_DEFAULT_QUEUE")
if _DEFAULT_QUEUE:
    celery_app.conf.task_default_queue = _DEFAULT_QUEUE


def redis_client():  # type: ignore[no-untyped-def]
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def shared_database(tmp_path: Path) -> tuple[str, Callable[[str, list[object]], list[tuple]]]:
    """A DATABASE_URL for the worker naming the database this test uses, and a raw reader
    of it (`read(sql, params)`, `%s` placeholders; [] when the table does not exist yet)."""
    from django.conf import settings
    from django.db import ProgrammingError, connection

    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        auth = quote(db.get("USER") or "")
        if db.get("PASSWORD"):
            auth += ":" + quote(db["PASSWORD"])
        url = f"postgres://{auth + '@' if auth else ''}{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"

        def read(sql: str, params: list[object]) -> list[tuple]:
            try:
                with transaction_free_cursor(connection) as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchall()
            except ProgrammingError:  # the table does not exist (yet)
                return []

        return url, read
    # SQLite: the test database lives in memory, so the worker gets a file of its own.
    path = tmp_path / "worker.sqlite3"

    def read_sqlite(sql: str, params: list[object]) -> list[tuple]:
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as conn:
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            except sqlite3.OperationalError:
                return []

    return f"sqlite:///{path}", read_sqlite


@contextlib.contextmanager
def transaction_free_cursor(connection):  # type: ignore[no-untyped-def]
    """A cursor whose failed statement does not poison the test's connection."""
    from django.db import transaction

    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        yield cursor


class CeleryWorkers:
    """Start, SIGKILL and stop real worker processes consuming one private queue."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        *,
        visibility_timeout_s: int,
        include: tuple[str, ...] = (),
        route_here: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        from django.conf import settings

        self.tmp_path = tmp_path
        self.queue = f"ops-probe-{uuid.uuid4().hex[:10]}"
        self.prefix = f"{self.queue}:"
        self.include = ("tests.celery_worker", *include)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_VISIBILITY_TIMEOUT": str(visibility_timeout_s),
            "OPS_PROBE_KEY_PREFIX": self.prefix,
            "LOG_FORMAT": "json",
            "DJANGO_SETTINGS_MODULE": "voiceplatform.settings",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        if route_here:
            self.env["OPS_PROBE_DEFAULT_QUEUE"] = self.queue
        self.procs: list[subprocess.Popen] = []

    def start(self, pool: str = "solo") -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # closed in stop_all
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "voiceplatform",
                "worker",
                "-P",
                pool,
                "-c",
                "1",
                "-Q",
                self.queue,
                "-n",
                f"{self.queue}-{len(self.procs)}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
                "-I",
                ",".join(self.include),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SIGKILL takes nothing else down
        )
        proc.log_file = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group: no chance to ack, reject or clean up."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, proc: subprocess.Popen) -> str:
        return (self.tmp_path / f"worker-{self.procs.index(proc)}.log").read_text(errors="replace")

    def unacked(self) -> int:
        """Messages a worker took and never acknowledged, parked under this pool's keys."""
        return int(redis_client().hlen(f"{self.prefix}unacked"))

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_group(proc)
            proc.log_file.close()  # type: ignore[attr-defined]
        client = redis_client()
        for pattern in (f"{self.prefix}*", self.queue):
            for name in client.scan_iter(match=pattern):
                client.delete(name)
