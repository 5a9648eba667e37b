"""Websocket consumers of the live support dashboard.

`/ws/dashboard/` streams every session's row changes; `/ws/sessions/<uuid>/` streams one
session's events, turns and row. Both send a `snapshot` first, then the live messages of
docs/CONTRACTS.md (`session.updated`, `event.added`, `turn.completed`), each with
`session_id` and the per-session `seq`. Messages published together arrive as one
`live.batch` layer message; a dashboard page may get several in one `batch` frame.

No event is silently missed:
- `/ws/dashboard/` pages share one channel-layer subscription per process
  (`DashboardHub`), each with its own bounded queue: a page that falls behind drops its
  own messages (counted, reason `slow_client`) and gets a fresh snapshot;
- Redis pub/sub keeps nothing: what is published while a process is not subscribed, or
  while its Redis connection is down, never arrives. `event.added` seqs are gapless per
  session, so a consumer that sees a jump counts the hole in
  `voice_dashboard_events_dropped_total{reason="seq_gap"}` and repairs it from the DB;
- a client that reconnects asks for `{"type": "resync", "after_seq": N}` (or connects
  with `?after_seq=N`) and gets the events after N from the DB.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from sessions_app import broadcast, dashboard_selectors
from sessions_app.models import VoiceSession

logger = logging.getLogger(__name__)

MAX_INBOUND_FRAME_BYTES = 64 * 1024
# Close codes (4000-4999 are for applications).
# Event numbers are PostgreSQL integers: a larger after_seq is an error frame, not a 1011.
MAX_SEQ = 2**31 - 1
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_LARGE = 4413  # mirrors HTTP 413; RFC 6455's 1009 is for the server's own limits

# A dashboard page that falls this far behind loses its oldest-pending messages (counted)
# and gets a fresh snapshot once it has caught up.
DASHBOARD_QUEUE_SIZE = 500
# At most this many live messages go out in one websocket frame (a `batch`).
FRAME_BATCH_MAX = 200
REPAIR_DELAY_SECONDS = 0.5

# Where the hub's pages cache a message's encoded frame (never sent: "__" keys are private).
_ENCODED_KEY = "__dashboard_text"

# Text fields the dashboard table never shows; left out of its stream to keep frames small.
_DASHBOARD_TURN_OMIT = ("user_text", "generated_text", "heard_text")


def _count_dropped(count: int, reason: str) -> None:
    try:
        from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

        DASHBOARD_EVENTS_DROPPED.labels(reason=reason).inc(count)
    except Exception:  # metrics never break the stream
        logger.debug("could not count dropped events", exc_info=True)


class WatchConsumer(AsyncJsonWebsocketConsumer):
    """Shared behaviour: staff-only connect, frame size limit, seq gap repair."""

    groups_to_join: list[str]

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Filled before connect() so handlers that race the snapshot see a consistent state.
        self.last_event_seq: dict[str, int] = {}
        self.joined: list[str] = []
        await super().websocket_connect(message)

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await database_sync_to_async(dashboard_selectors.support_staff_check)(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        self.rights_check = asyncio.create_task(self._recheck_rights(), name="dashboard-rights")
        await self.start()

    async def _recheck_rights(self) -> None:
        """A revoked staff member (or a logged-out session) stops receiving within
        DASHBOARD_RIGHTS_RECHECK_SECONDS: rights are read again from the database."""
        from django.conf import settings

        user = self.scope.get("user")
        session = self.scope.get("session")
        while True:
            await asyncio.sleep(settings.DASHBOARD_RIGHTS_RECHECK_SECONDS)
            allowed = await database_sync_to_async(dashboard_selectors.watcher_still_allowed)(
                user_id=getattr(user, "pk", None), session_key=getattr(session, "session_key", None)
            )
            if not allowed:
                await self.close(code=CLOSE_FORBIDDEN)
                return

    async def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "rights_check", None)
        if task is not None:
            task.cancel()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        # Checked on the raw frame, before any JSON decoding is spent on it.
        data = message.get("text")
        size = len(data.encode("utf-8")) if data is not None else len(message.get("bytes") or b"")
        if size > MAX_INBOUND_FRAME_BYTES:
            # The server answers the close with websocket.disconnect, which leaves the groups.
            await self.close(code=CLOSE_TOO_LARGE)
            return
        if data is None:
            await self.send_error("binary frames are not accepted; send JSON text")
            return
        await super().websocket_receive(message)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self.send_error("frames must be JSON objects")
            return
        kind = content.get("type")
        if kind == "resync":
            await self.resync(content)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error(f"unknown message type {kind!r}")

    async def resync(self, content: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def send_error(self, detail: str) -> None:
        await self.send_json({"type": "error", "detail": detail})

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
            return None  # answered as "frames must be JSON objects"

    # --- seq tracking ------------------------------------------------------------------
    def _gap(self, session_id: str, seq: int) -> tuple[int, bool]:
        """(last seq seen, is this message new?) for an `event.added` of a session."""
        last = self.last_event_seq.get(session_id)
        if last is not None and seq <= last:
            return last, False  # already delivered (e.g. by a repair or a resync)
        return (last if last is not None else seq - 1), True

    # --- live messages from the channel layer (dotted types → handlers) ----------------
    async def live_batch(self, message: dict[str, Any]) -> None:
        """Several messages published together (`broadcast.publish_many`), in order."""
        for item in message.get("messages") or ():
            await self.deliver(item)

    async def deliver(self, message: dict[str, Any]) -> None:
        """Run a live message's handler directly.

        Not `dispatch()`: Channels' dispatch first closes stale DB connections through a
        thread hop, and these handlers never touch the DB. Twenty pages times a few
        messages per turn made that hop most of the server's work (bench/fanout.py).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            logger.debug("no handler for live message %s", message.get("type"))
            return
        await handler(message)

    async def session_updated(self, message: dict[str, Any]) -> None:
        await self.send_json(_public(message))

    async def event_added(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def turn_completed(self, message: dict[str, Any]) -> None:
        raise NotImplementedError


def _compact_turn(message: dict[str, Any]) -> dict[str, Any]:
    turn = {k: v for k, v in (message.get("turn") or {}).items() if k not in _DASHBOARD_TURN_OMIT}
    return {**_public(message), "turn": turn}


def _public(message: dict[str, Any]) -> dict[str, Any]:
    """Channel-layer internals never reach browsers."""
    return {k: v for k, v in message.items() if not k.startswith("__")}


def _after_seq_from_scope(scope: dict[str, Any]) -> int | None:
    query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
    raw = (query.get("after_seq") or [None])[0]
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


class DashboardHub:
    """One subscription to the `dashboard` group per server process, fanned out in memory.

    Every session's every change goes to the `dashboard` group. The hub joins it once
    per process, so each message is received and decoded once, encoded to JSON once, and
    handed to the pages' own bounded queues: publishing costs the same for 1 or 100 open
    dashboards, and a page that cannot keep up drops its own messages (and resyncs)
    without slowing the others.
    """

    def __init__(self) -> None:
        # Weak: a consumer that died without disconnecting does not linger here.
        self.members: weakref.WeakSet[DashboardConsumer] = weakref.WeakSet()
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def add(self, consumer: DashboardConsumer) -> None:
        async with self.lock:
            self.members.add(consumer)
            if self.task is None:
                layer = consumer.channel_layer
                # The default prefix: process-local channels share one Redis list per process.
                self.channel = await layer.new_channel()
                await layer.group_add(broadcast.DASHBOARD_GROUP, self.channel)
                self.task = asyncio.ensure_future(self._run(layer, self.channel))

    async def remove(self, consumer: DashboardConsumer) -> None:
        async with self.lock:
            self.members.discard(consumer)
            if self.members or self.task is None:
                return
            task, channel, layer = self.task, self.channel, consumer.channel_layer
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


class DashboardConsumer(WatchConsumer):
    """All sessions: rows (`session.updated`) and compact `turn.completed` messages.

    Fed by the process's `DashboardHub` through a bounded queue. `event.added` is not
    forwarded (the table has no timeline) but its seqs are tracked: a hole means messages
    were dropped upstream, and that session's row is re-read from the DB.
    """

    queue: asyncio.Queue | None = None
    outbox: list[str] | None = None  # frames being gathered by the pump
    pump: asyncio.Task | None = None
    repair: asyncio.Task | None = None
    lagging = False

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.dirty: set[str] = set()
        await super().websocket_connect(message)

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=DASHBOARD_QUEUE_SIZE)
        # Subscribe before reading the snapshot: a change in between is sent twice, never lost.
        await dashboard_hub().add(self)
        await self.start_snapshot_only()
        self.pump = asyncio.ensure_future(self._pump())

    def offer(self, message: dict[str, Any]) -> None:
        """Called by the hub for every dashboard message; never blocks the hub."""
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.lagging = True
            _count_dropped(1, "slow_client")

    async def _pump(self) -> None:
        """Forward queued messages; what is already waiting goes out in one frame.

        Under load a page gets one `{"type": "batch", "messages": [...]}` frame for all
        the messages that queued up while the last frame was being written, instead of
        one frame each: nothing waits for a timer, and frames stay few when it is busy.
        """
        assert self.queue is not None
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
        if self.lagging and self.queue is not None and self.queue.empty():
            # Caught up after dropping: the snapshot replaces what was lost.
            self.lagging = False
            await self._flush()
            await self.start_snapshot_only()
            return
        await self.deliver(message)

    async def _flush(self) -> None:
        texts, self.outbox = self.outbox or [], []
        if len(texts) == 1:
            await self.send(text_data=texts[0])
        elif texts:
            await self.send(text_data='{"type": "batch", "messages": [' + ", ".join(texts) + "]}")

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self.queue is not None:
            await dashboard_hub().remove(self)
        for task in (self.pump, self.repair):
            if task is not None:
                task.cancel()

    async def resync(self, content: dict[str, Any]) -> None:
        session_id = content.get("session_id")
        if session_id:
            row = await database_sync_to_async(dashboard_selectors.dashboard_row)(session_id=_uuid(session_id))
            if row is not None:
                await self.send_json(
                    {"type": "session.updated", "session_id": row["id"], "seq": row["seq"], "session": row}
                )
            return
        await self.start_snapshot_only()

    async def start_snapshot_only(self) -> None:
        rows = await database_sync_to_async(dashboard_selectors.dashboard_rows)()
        for row in rows:
            self.last_event_seq[row["id"]] = max(row["seq"], self.last_event_seq.get(row["id"], 0))
        await self.send_json({"type": "snapshot", "scope": "dashboard", "sessions": rows})

    async def event_added(self, message: dict[str, Any]) -> None:
        session_id, seq = str(message["session_id"]), int(message["seq"])
        last, new = self._gap(session_id, seq)
        if not new:
            return
        self.last_event_seq[session_id] = seq
        if seq > last + 1:
            _count_dropped(seq - last - 1, "seq_gap")
            # Drops come in bursts under overload: repair rows in one query, twice a second
            # at most, instead of one query per hole.
            self.dirty.add(session_id)
            if self.repair is None or self.repair.done():
                self.repair = asyncio.ensure_future(self._repair_rows())

    async def _repair_rows(self) -> None:
        await asyncio.sleep(REPAIR_DELAY_SECONDS)
        ids, self.dirty = list(self.dirty), set()
        rows = await database_sync_to_async(dashboard_selectors.dashboard_rows_for)(session_ids=ids)
        for row in rows:
            await self.send_json(
                {
                    "type": "session.updated",
                    "session_id": row["id"],
                    "seq": row["seq"],
                    "session": row,
                    "repaired": True,
                }
            )

    async def session_updated(self, message: dict[str, Any]) -> None:
        await self._forward(message, _public)

    async def turn_completed(self, message: dict[str, Any]) -> None:
        await self._forward(message, _compact_turn)

    async def _forward(self, message: dict[str, Any], build: Any) -> None:
        # The hub hands the same dict to every page: encode it once, send the text N times.
        text = message.get(_ENCODED_KEY)
        if text is None:
            text = message[_ENCODED_KEY] = json.dumps(build(message))
        if self.outbox is not None:
            self.outbox.append(text)
        else:
            await self.send(text_data=text)


class SessionConsumer(WatchConsumer):
    """One session: snapshot (session, turns, events, budgets, report), then everything."""

    async def start(self) -> None:
        self.session_id = str(self.scope["url_route"]["kwargs"]["session_id"])
        exists = await database_sync_to_async(VoiceSession.objects.filter(pk=self.session_id).exists)()
        if not exists:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.join(broadcast.session_group(self.session_id))
        after_seq = _after_seq_from_scope(self.scope)
        if after_seq is not None:
            # A reconnecting client keeps its page and only needs what it missed.
            await self.send_missed(after_seq)
            return
        detail = await database_sync_to_async(dashboard_selectors.session_detail)(session_id=self.session_id)
        if detail is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.last_event_seq[self.session_id] = detail["events"][-1]["seq"] if detail["events"] else 0
        await self.send_json(
            {
                "type": "snapshot",
                "scope": "session",
                "session_id": self.session_id,
                "seq": detail["session"]["seq"],
                **detail,
            }
        )

    async def send_missed(self, after_seq: int) -> None:
        """Replay events after `after_seq` from the DB, plus the turns and row they imply."""
        events = await database_sync_to_async(dashboard_selectors.session_events_after)(
            session_id=self.session_id, after_seq=after_seq
        )
        turn_indexes = [e["payload"].get("index") for e in events if e["type"] == "turn.completed"]
        turns = await database_sync_to_async(_turns_by_index)(self.session_id, turn_indexes)
        row = await database_sync_to_async(dashboard_selectors.dashboard_row)(session_id=self.session_id)
        last = events[-1]["seq"] if events else after_seq
        self.last_event_seq[self.session_id] = max(self.last_event_seq.get(self.session_id, 0), last)
        await self.send_json(
            {
                "type": "resync",
                "session_id": self.session_id,
                "after_seq": after_seq,
                "seq": last,
                "events": events,
                "turns": turns,
                "session": row,
                "complete": len(events) < dashboard_selectors.EVENTS_PAGE_LIMIT,
            }
        )

    async def resync(self, content: dict[str, Any]) -> None:
        after_seq = content.get("after_seq", 0)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or not 0 <= after_seq <= MAX_SEQ:
            await self.send_error(f"after_seq must be an integer from 0 to {MAX_SEQ}")
            return
        if content.get("session_id") not in (None, self.session_id):
            await self.send_error("this socket watches another session")
            return
        await self.send_missed(after_seq)

    async def event_added(self, message: dict[str, Any]) -> None:
        seq = int(message["seq"])
        last, new = self._gap(self.session_id, seq)
        if not new:
            return
        if seq > last + 1:
            # Dropped upstream: fill the hole from the DB, in order, before this one.
            _count_dropped(seq - last - 1, "seq_gap")
            await self.send_missed(last)
            return  # send_missed included this event too
        self.last_event_seq[self.session_id] = seq
        await self.send_json(_public(message))

    async def turn_completed(self, message: dict[str, Any]) -> None:
        await self.send_json(_public(message))


def _turns_by_index(session_id: str, indexes: list[Any]) -> list[dict[str, Any]]:
    turns = []
    for index in indexes:
        if isinstance(index, int):
            turn = dashboard_selectors.session_turn(session_id=session_id, index=index)
            if turn is not None:
                turns.append(turn)
    return turns


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None
