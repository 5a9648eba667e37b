"""The machinery behind the dashboard sockets: the per-process hub, per-page queues that
batch frames, and seq tracking for gap repair. The consumers (`live/consumers.py`) only
wire it to websockets and the DB.

No event is silently missed:
- `/ws/dashboard/` pages share one channel-layer subscription per process
  (`DashboardHub`), each with its own bounded queue (`PageQueue`): a page that falls
  behind drops its own messages (counted, reason `slow_client`) and gets a fresh snapshot;
- Redis pub/sub keeps nothing: what is published while a process is not subscribed, or
  while its Redis connection is down, never arrives. `event.added` seqs are gapless per
  session, so a consumer that sees a jump (`SeqTracker`) counts the hole in
  `voice_dashboard_events_dropped_total{reason="seq_gap"}` and repairs it from the DB
  (`RowRepair` batches the dashboard's re-reads);
- a client that reconnects asks for `{"type": "resync", "after_seq": N}` (or connects
  with `?after_seq=N`) and gets the events after N from the DB.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sessions_app import broadcast
from sessions_app.live import messages

logger = logging.getLogger(__name__)

# A dashboard page that falls this far behind loses its oldest-pending messages (counted)
# and gets a fresh snapshot once it has caught up.
DASHBOARD_QUEUE_SIZE = 500
# At most this many live messages go out in one websocket frame (a `batch`).
FRAME_BATCH_MAX = 200
REPAIR_DELAY_SECONDS = 0.5

# Where a page caches a message's encoded frame (never sent: "__" keys are private).
_ENCODED_KEY = "__dashboard_text"


def count_dropped(count: int, reason: str) -> None:
    try:
        from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

        DASHBOARD_EVENTS_DROPPED.labels(reason=reason).inc(count)
    except Exception:  # metrics never break the stream
        logger.debug("could not count dropped events", exc_info=True)


class SeqTracker:
    """The last `event.added` seq a socket has delivered (or covered), per session."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def gap(self, session_id: str, seq: int) -> tuple[int, bool]:
        """(last seq seen, is this message new?) for an `event.added` of a session.

        A new seq above last + 1 means the messages in between were lost: the caller
        repairs the hole (and `count_gap` counts it)."""
        last = self.last.get(session_id)
        if last is not None and seq <= last:
            return last, False  # already delivered (e.g. by a repair or a resync)
        return (last if last is not None else seq - 1), True

    def advance(self, session_id: str, seq: int) -> None:
        self.last[session_id] = max(seq, self.last.get(session_id, 0))


def count_gap(last: int, seq: int) -> bool:
    """Count the events lost between `last` and `seq`; True if there were any."""
    if seq > last + 1:
        count_dropped(seq - last - 1, "seq_gap")
        return True
    return False


class RowRepair:
    """Sessions whose messages were lost, re-read together after REPAIR_DELAY_SECONDS.

    Drops come in bursts under overload: rows are repaired in one query, twice a second
    at most, instead of one query per hole.
    """

    def __init__(self, repair: Callable[[list[str]], Awaitable[None]]) -> None:
        self.repair = repair
        self.dirty: set[str] = set()
        self.task: asyncio.Task | None = None

    def mark(self, session_id: str) -> None:
        self.dirty.add(session_id)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(REPAIR_DELAY_SECONDS)
        ids, self.dirty = list(self.dirty), set()
        await self.repair(ids)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Page(Protocol):
    """What a `PageQueue` needs from its websocket consumer."""

    async def deliver(self, message: dict[str, Any]) -> None: ...

    async def send_snapshot(self) -> None: ...

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None: ...


class PageQueue:
    """One dashboard page's bounded queue, drained by a pump that batches frames.

    Under load a page gets one `{"type": "batch", "messages": [...]}` frame for all the
    messages that queued up while the last frame was being written, instead of one frame
    each: nothing waits for a timer, and frames stay few when it is busy.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=DASHBOARD_QUEUE_SIZE)
        self.outbox: list[str] | None = None  # frames being gathered by the pump
        self.lagging = False
        self.task: asyncio.Task | None = None

    def offer(self, message: dict[str, Any]) -> None:
        """Called by the hub for every dashboard message; never blocks the hub."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.lagging = True
            count_dropped(1, "slow_client")

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._pump())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _pump(self) -> None:
        """Forward queued messages; what is already waiting goes out in one frame."""
        while True:
            message = await self.queue.get()
            self.outbox = []
            try:
                await self._handle(message)
                while not self.queue.empty() and len(self.outbox) < FRAME_BATCH_MAX:
                    await self._handle(self.queue.get_nowait())
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("dashboard message %s failed", message.get("type"))
            finally:
                self.outbox = None

    async def _handle(self, message: dict[str, Any]) -> None:
        if self.lagging and self.queue.empty():
            # Caught up after dropping: the snapshot replaces what was lost.
            self.lagging = False
            await self._flush()
            await self.page.send_snapshot()
            return
        await self.page.deliver(message)

    async def _flush(self) -> None:
        texts, self.outbox = self.outbox or [], []
        if len(texts) == 1:
            await self.page.send(text_data=texts[0])
        elif texts:
            await self.page.send(text_data=messages.batch_frame(texts))

    async def forward(self, message: dict[str, Any], build: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Send `build(message)`, in the frame being gathered if there is one.

        The hub hands the same dict to every page: it is encoded once, sent N times.
        """
        text = message.get(_ENCODED_KEY)
        if text is None:
            text = message[_ENCODED_KEY] = messages.encode(build(message))
        if self.outbox is not None:
            self.outbox.append(text)
        else:
            await self.page.send(text_data=text)


class DashboardHub:
    """One subscription to the `dashboard` group per server process, fanned out in memory.

    Every session's every change goes to the `dashboard` group. The hub joins it once
    per process, so each message is received and decoded once, encoded to JSON once, and
    handed to the pages' own bounded queues: publishing costs the same for 1 or 100 open
    dashboards, and a page that cannot keep up drops its own messages (and resyncs)
    without slowing the others.
    """

    def __init__(self) -> None:
        # Weak: a page whose consumer died without disconnecting does not linger here.
        self.members: weakref.WeakSet[PageQueue] = weakref.WeakSet()
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def add(self, page: PageQueue, layer: Any) -> None:
        async with self.lock:
            self.members.add(page)
            if self.task is None:
                # The default prefix: process-local channels share one Redis list per process.
                self.channel = await layer.new_channel()
                await layer.group_add(broadcast.DASHBOARD_GROUP, self.channel)
                self.task = asyncio.ensure_future(self._run(layer, self.channel))

    async def remove(self, page: PageQueue, layer: Any) -> None:
        async with self.lock:
            self.members.discard(page)
            if self.members or self.task is None:
                return
            task, channel = self.task, self.channel
            self.task = self.channel = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await layer.group_discard(broadcast.DASHBOARD_GROUP, channel)

    async def _run(self, layer: Any, channel: str) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: keep trying; pages resync when it is back
                logger.warning("dashboard hub could not receive", exc_info=True)
                await asyncio.sleep(1)
                continue
            for member in list(self.members):
                member.offer(message)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DashboardHub] = weakref.WeakKeyDictionary()


def dashboard_hub() -> DashboardHub:
    """The hub of the running event loop (one per server process; one per test loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = DashboardHub()
    return hub
