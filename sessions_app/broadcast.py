"""Channel-layer group names and non-blocking publishing of live events.

Group names come from these helpers only. Messages are dicts with a dotted `type`
(`session.updated`, `turn.completed`, `event.added`, …), built by
`sessions_app.live.messages`; the Channels consumers turn the dots into handler names
(`session_updated`). Several messages for the same groups travel as one `live.batch`
message (`{"type": "live.batch", "messages": [...]}`, in order; `messages.unbatch`
unpacks it), so a turn costs one publish per group, not three.

Publishing never blocks a caller for long and never raises: the DB is the source of
truth and a dashboard resyncs from it, so a failed or full publish is dropped and
counted in `voice_dashboard_events_dropped_total`.

Sync code (services, the agent's recorder thread) hands messages to one publisher
thread per process, which sends them in the order they were handed over. Publishing
from the caller's thread would cost a new event loop and a new Redis connection per
call (`async_to_sync`), and a request would wait for Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer

from sessions_app.live.messages import live_batch

logger = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"
PUBLISH_TIMEOUT_S = 0.5
# Messages waiting for the publisher thread; beyond this (Redis away for long) they are dropped.
BACKLOG_LIMIT = 10_000


def session_group(session_id: UUID | str) -> str:
    """Dashboards watching one session."""
    return f"session.{session_id}"


def agent_control_group(session_id: UUID | str) -> str:
    """The agent job serving a session listens here (client interrupts in local mode)."""
    return f"agent.{session_id}"


def session_groups(session_id: UUID | str) -> list[str]:
    return [DASHBOARD_GROUP, session_group(session_id)]


def _count_drop(reason: str, count: int = 1) -> None:
    try:
        from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

        DASHBOARD_EVENTS_DROPPED.labels(reason=reason).inc(count)
    except Exception:  # metrics must never break publishing
        logger.debug("could not count dropped event", exc_info=True)


async def apublish_many(groups: Iterable[str], messages: list[dict[str, Any]]) -> None:
    """Publish messages, in order, to each group: one layer message per group."""
    if not messages:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    message = live_batch(messages)
    for group in groups:
        try:
            await asyncio.wait_for(layer.group_send(group, message), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            _count_drop(type(exc).__name__, len(messages))
            logger.warning("dropped live event %s for %s: %s", message.get("type"), group, exc)


async def apublish(groups: Iterable[str], message: dict[str, Any]) -> None:
    await apublish_many(groups, [message])


class _Publisher:
    """One daemon thread with its own event loop; sends what sync code hands it, in order.

    Items waiting together for the same groups go out as one batch (order kept), so a
    burst costs one publish per group.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._lock = threading.Lock()
        self._in_flight = 0  # handed over, not yet sent; touched on the loop thread only

    def _ensure_started(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                queue: asyncio.Queue = asyncio.Queue()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.create_task(self._drain(queue))
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name="live-event-publisher", daemon=True).start()
                ready.wait(5)
                self._loop, self._queue = loop, queue
            assert self._queue is not None
            return self._loop, self._queue

    async def _drain(self, queue: asyncio.Queue) -> None:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            # Consecutive items for the same groups become one batch; order is kept.
            runs: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
            for groups, messages in items:
                if runs and runs[-1][0] == groups:
                    runs[-1][1].extend(messages)
                else:
                    runs.append((groups, list(messages)))
            try:
                for groups, messages in runs:
                    await apublish_many(groups, messages)  # never raises; drops are counted
            finally:
                self._in_flight -= len(items)

    def submit(self, groups: Iterable[str], messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        item = (tuple(groups), list(messages))
        try:
            loop, queue = self._ensure_started()

            def put() -> None:
                if queue.qsize() >= BACKLOG_LIMIT:
                    _count_drop("backlog", len(item[1]))
                    return
                self._in_flight += 1
                queue.put_nowait(item)

            loop.call_soon_threadsafe(put)
        except Exception:  # the DB is the truth; a dashboard resyncs
            _count_drop("publisher_unavailable", len(messages))
            logger.warning("dropped live events handed to the publisher", exc_info=True)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything handed over so far was sent (tests, shutdown)."""
        if self._loop is None or self._loop.is_closed():
            return True

        async def idle() -> None:
            while self._in_flight:
                await asyncio.sleep(0.005)

        try:
            asyncio.run_coroutine_threadsafe(idle(), self._loop).result(timeout)
        except Exception:
            return False
        return True


_publisher = _Publisher()


def publish_many(groups: Iterable[str], messages: list[dict[str, Any]]) -> None:
    """Hand messages (sent in order, as one batch) to the publisher thread; never waits.

    Call it from `transaction.on_commit`, so nobody hears of a change that rolled back.
    """
    _publisher.submit(groups, messages)


def publish(groups: Iterable[str], message: dict[str, Any]) -> None:
    publish_many(groups, [message])


def publish_flush(timeout: float = 5.0) -> bool:
    """Block until the messages handed over so far have been sent (tests and shutdown)."""
    return _publisher.flush(timeout)
