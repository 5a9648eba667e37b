"""The job's bookkeeping writer: a bounded queue drained by one batching writer task.

The agent's event loop only ever calls the non-blocking `record_*` methods. The writer
task takes records in batches and runs the DB writes (and the broadcasts they trigger)
on its own thread. Turns and timeline events are never dropped: when the queue is full
they go to an overflow list that the writer drains next (memory grows instead).
Heartbeats are dropped when the queue is full and counted in
`voice_dashboard_events_dropped_total{reason="recorder_full"}`.

While the database cannot be reached (a PostgreSQL restart, a failover), the writer
retries the record in hand with exponential backoff for up to `RECORDER_RETRY_SECONDS`,
and every later record waits behind it, so order is kept. A retry after a commit whose
answer was lost stores nothing twice: turns are unique per index, and each timeline
event carries a key of its own (`SessionEvent.record_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Our hooks' cost is measured as CPU time of the loop's thread: on a shared machine,
# wall-clock deltas would also count time the OS gave to other processes.
_cpu = time.thread_time

BATCH_MAX = 50
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 5.0


@dataclass
class Record:
    kind: str  # "turn" | "event" | "heartbeat"
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        return self.kind in ("turn", "event")


class Recorder:
    def __init__(self, *, session_id: str, maxsize: int = 1000, retry_seconds: float = 120.0) -> None:
        self.session_id = session_id
        self.retry_seconds = retry_seconds
        self._abandoned = threading.Event()  # set by abort(): a retrying writer gives up
        self.retries = 0
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=maxsize)
        self._overflow: deque[Record] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"recorder-{session_id[:8]}")
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        self.overflowed = 0
        self.turns_written: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.on_loop_time: Callable[[float], None] | None = None
        # Called on the loop with (state, end reason) when a heartbeat finds the session
        # final in the database (ended or failed while this job still serves it).
        self.on_session_final: Callable[[str, str], None] | None = None
        self._final_reported = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- hot path (event loop): never blocks ------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name=f"recorder:{self.session_id}")

    def record_turn(self, data: dict[str, Any]) -> None:
        self._put(Record("turn", data))

    def record_event(self, type: str, payload: dict[str, Any] | None = None) -> None:
        self._put(Record("event", {"type": type, "payload": payload or {}, "key": uuid.uuid4().hex}))

    def heartbeat(self) -> None:
        self._put(Record("heartbeat"))

    def _put(self, record: Record) -> None:
        self._idle.clear()
        if record.durable and self._overflow:
            # keep order: once spilling, durable records queue behind the overflow
            self._overflow.append(record)
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            if record.durable:
                self._overflow.append(record)
                self.overflowed += 1
            else:
                self.dropped += 1
                _count_drop()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._overflow)

    # -- shutdown ----------------------------------------------------------------------
    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is written."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wait_idle(), timeout)

    async def _wait_idle(self) -> None:
        while self.pending or not self._idle.is_set():
            self._idle.clear()
            await self._idle.wait()

    async def aclose(self, timeout: float | None = None) -> None:
        """Write what is pending (waiting out a database outage up to the retry window)."""
        await self.drain(self.retry_seconds + 5.0 if timeout is None else timeout)
        if self.pending:
            logger.error("recorder for %s closed with %d records unwritten", self.session_id, self.pending)
        self.abort()

    def abort(self) -> None:
        """Stop at once (a crashed job loses what it had not written)."""
        self._abandoned.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._queue = asyncio.Queue(maxsize=self._queue.maxsize)
        self._overflow.clear()
        self._idle.set()
        with contextlib.suppress(RuntimeError):
            self._executor.submit(_close_db_connection)
        self._executor.shutdown(wait=False)

    # -- writer task --------------------------------------------------------------------
    async def _next(self) -> Record:
        if self._queue.empty() and self._overflow:
            return self._overflow.popleft()
        return await self._queue.get()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._idle.set()
            record = await self._next()
            t0 = _cpu()
            self._idle.clear()
            batch = [record]
            while len(batch) < BATCH_MAX and self.pending:
                batch.append(await self._next())
            future = loop.run_in_executor(self._executor, self._write_batch, batch)
            self._charge(_cpu() - t0)
            try:
                written = await future
                t1 = _cpu()
                self.turns_written.extend(written)
            except Exception:  # the writer must survive anything
                t1 = _cpu()
                logger.exception("recorder batch failed")
            _set_depth(self.pending)
            self._charge(_cpu() - t1)

    def _charge(self, seconds: float) -> None:
        if self.on_loop_time is not None:
            self.on_loop_time(seconds)

    def _write_batch(self, batch: list[Record]) -> list[dict[str, Any]]:
        """Runs on the writer thread: DB writes and the broadcasts they trigger."""
        from django.db import close_old_connections

        close_old_connections()
        written: list[dict[str, Any]] = []
        heartbeat = False
        for record in batch:
            if record.kind == "heartbeat":
                heartbeat = True  # one update per batch is enough
                continue
            try:
                if record.kind == "turn":
                    self._write_durably(self._write_turn, record.data)
                    written.append(record.data)
                elif record.kind == "event":
                    self._write_durably(self._write_event, record.data)
            except Exception as exc:
                self.errors.append(f"{record.kind}: {exc}")
                logger.exception("could not write %s record for session %s", record.kind, self.session_id)
        if heartbeat:
            try:
                self._write_heartbeat()
            except Exception as exc:  # the next heartbeat tries again; no traceback for an outage
                logger.warning("heartbeat write failed: %s", exc)
        return written

    def _write_heartbeat(self) -> None:
        """Mark the session alive, and tell the job when the session is already final.

        The platform ends a session in the database and then tells its job over Redis; a
        message sent while Redis was down never arrives. The heartbeat's one UPDATE skips a
        final session, so no extra query runs on a live call: only then is the state read.
        """
        from django.utils import timezone

        from sessions_app.models import FINAL_STATES, VoiceSession

        sessions = VoiceSession.objects.filter(pk=self.session_id)
        if sessions.exclude(state__in=FINAL_STATES).update(last_heartbeat_at=timezone.now()):
            return
        if self._final_reported or self.on_session_final is None or self._loop is None:
            return
        state, reason = sessions.values_list("state", "end_reason").first() or ("deleted", "session deleted")
        self._final_reported = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the job is gone anyway
            self._loop.call_soon_threadsafe(self.on_session_final, state, reason)

    def _write_durably(self, write: Callable[[dict[str, Any]], None], data: dict[str, Any]) -> None:
        """Write one record; while the database cannot be reached, retry it with backoff
        (later records wait, so order is kept). Other errors are not retried."""
        from django.db import InterfaceError, OperationalError

        deadline = time.monotonic() + self.retry_seconds
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                write(data)
                return
            except (OperationalError, InterfaceError) as exc:
                if self._abandoned.is_set() or time.monotonic() + delay > deadline:
                    raise
                if delay == RETRY_FIRST_DELAY:
                    logger.warning("database unavailable, retrying the session's records: %s", exc)
                self.retries += 1
                _count_retry()
                _close_db_connection()  # a connection the outage broke is not reused
                self._abandoned.wait(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)

    def _write_turn(self, data: dict[str, Any]) -> None:
        from sessions_app.turns import turn_record

        turn_record(session_id=self.session_id, data=data)

    def _write_event(self, data: dict[str, Any]) -> None:
        from django.db import transaction

        from sessions_app.services import session_event_append

        with transaction.atomic():  # the sequence number and the row together, or neither
            session_event_append(
                session_id=self.session_id, type=data["type"], payload=data["payload"], key=data.get("key")
            )


def _close_db_connection() -> None:
    from django.db import connection

    connection.close()


def _count_retry() -> None:
    try:
        from sessions_app.metrics import RECORDER_RETRIES

        RECORDER_RETRIES.inc()
    except Exception:
        logger.debug("could not count a recorder retry", exc_info=True)


def _count_drop() -> None:
    try:
        from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

        DASHBOARD_EVENTS_DROPPED.labels(reason="recorder_full").inc()
    except Exception:
        logger.debug("could not count a dropped record", exc_info=True)


def _set_depth(depth: int) -> None:
    try:
        from sessions_app.metrics import RECORDER_QUEUE_DEPTH

        RECORDER_QUEUE_DEPTH.set(depth)
    except Exception:
        logger.debug("could not set the recorder depth", exc_info=True)
