"""Websocket consumers of the live support dashboard (thin: reads, then `live.hub`).

`/ws/dashboard/` streams every session's row changes; `/ws/sessions/<uuid>/` streams one
session's events, turns and row. Both send a `snapshot` first, then the live messages of
docs/CONTRACTS.md (`session.updated`, `event.added`, `turn.completed`), each with
`session_id` and the per-session `seq`. Messages published together arrive as one
`live.batch` layer message; a dashboard page may get several in one `batch` frame.
Every frame is built by `sessions_app/live/messages.py`; how nothing is silently missed
is in `sessions_app/live/hub.py` and docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from sessions_app import broadcast, dashboard_selectors
from sessions_app.live import messages
from sessions_app.live.hub import PageQueue, RowRepair, SeqTracker, count_gap, dashboard_hub

logger = logging.getLogger(__name__)

MAX_INBOUND_FRAME_BYTES = 64 * 1024
# Close codes (4000-4999 are for applications).
# Event numbers are PostgreSQL integers: a larger after_seq is an error frame, not a 1011.
MAX_SEQ = 2**31 - 1
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_LARGE = 4413  # mirrors HTTP 413; RFC 6455's 1009 is for the server's own limits


class WatchConsumer(AsyncJsonWebsocketConsumer):
    """Shared behaviour: staff-only connect, frame size limit, live message handlers."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Filled before connect() so handlers that race the snapshot see a consistent state.
        self.seqs = SeqTracker()
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
            await self.send_json(messages.pong())
        else:
            await self.send_error(f"unknown message type {kind!r}")

    async def resync(self, content: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def send_error(self, detail: str) -> None:
        await self.send_json(messages.error(detail))

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
            return None  # answered as "frames must be JSON objects"

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
        await self.send_json(messages.public(message))

    async def event_added(self, message: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def turn_completed(self, message: dict[str, Any]) -> None:
        await self.send_json(messages.public(message))

    async def turn_heard(self, message: dict[str, Any]) -> None:
        await self.send_json(messages.public(message))


class DashboardConsumer(WatchConsumer):
    """All sessions: rows (`session.updated`) and compact `turn.completed` messages.

    Fed by the process's `DashboardHub` through its own `PageQueue`. `event.added` is not
    forwarded (the table has no timeline) but its seqs are tracked: a hole means messages
    were dropped upstream, and that session's row is re-read from the DB.
    """

    page: PageQueue | None = None
    repair: RowRepair | None = None

    async def start(self) -> None:
        self.page = PageQueue(self)
        self.repair = RowRepair(self._repair_rows)
        # Subscribe before reading the snapshot: a change in between is sent twice, never lost.
        await dashboard_hub().add(self.page, self.channel_layer)
        await self.send_snapshot()
        self.page.start()

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self.page is not None:
            await dashboard_hub().remove(self.page, self.channel_layer)
            self.page.stop()
        if self.repair is not None:
            self.repair.cancel()

    async def resync(self, content: dict[str, Any]) -> None:
        session_id = content.get("session_id")
        if session_id:
            row = await database_sync_to_async(dashboard_selectors.dashboard_row)(session_id=_uuid(session_id))
            if row is not None:
                await self.send_json(messages.session_updated(row))
            return
        await self.send_snapshot()

    async def send_snapshot(self) -> None:
        rows = await database_sync_to_async(dashboard_selectors.dashboard_rows)()
        for row in rows:
            self.seqs.advance(row["id"], row["seq"])
        await self.send_json(messages.dashboard_snapshot(rows))

    async def event_added(self, message: dict[str, Any]) -> None:
        session_id, seq = str(message["session_id"]), int(message["seq"])
        last, new = self.seqs.gap(session_id, seq)
        if not new:
            return
        self.seqs.advance(session_id, seq)
        if count_gap(last, seq) and self.repair is not None:
            self.repair.mark(session_id)

    async def _repair_rows(self, session_ids: list[str]) -> None:
        rows = await database_sync_to_async(dashboard_selectors.dashboard_rows_for)(session_ids=session_ids)
        for row in rows:
            await self.send_json(messages.session_updated(row, repaired=True))

    async def session_updated(self, message: dict[str, Any]) -> None:
        assert self.page is not None
        await self.page.forward(message, messages.public)

    async def turn_completed(self, message: dict[str, Any]) -> None:
        assert self.page is not None
        await self.page.forward(message, messages.compact_turn_completed)

    async def turn_heard(self, message: dict[str, Any]) -> None:
        """The table shows no heard gaps (the session page does); its event's seq counts."""


class SessionConsumer(WatchConsumer):
    """One session: snapshot (session, turns, events, budgets, report), then everything."""

    async def start(self) -> None:
        self.session_id = str(self.scope["url_route"]["kwargs"]["session_id"])
        if not await database_sync_to_async(dashboard_selectors.session_exists)(session_id=self.session_id):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.join(broadcast.session_group(self.session_id))
        after_seq = _after_seq_from_scope(self.scope)
        if after_seq is not None:
            # A reconnecting client keeps its page and only needs what it missed.
            await self.send_missed(after_seq)
            return
        snapshot = await database_sync_to_async(dashboard_selectors.session_snapshot)(session_id=self.session_id)
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.seqs.advance(self.session_id, snapshot["events"][-1]["seq"] if snapshot["events"] else 0)
        await self.send_json(messages.session_snapshot(self.session_id, snapshot))

    async def send_missed(self, after_seq: int) -> None:
        """Replay events after `after_seq` from the DB, plus the turns and row they imply."""
        missed = await database_sync_to_async(dashboard_selectors.session_missed)(
            session_id=self.session_id, after_seq=after_seq
        )
        message = messages.resync(self.session_id, after_seq=after_seq, **missed)
        self.seqs.advance(self.session_id, message["seq"])
        await self.send_json(message)

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
        last, new = self.seqs.gap(self.session_id, seq)
        if not new:
            return
        if count_gap(last, seq):
            # Dropped upstream: fill the hole from the DB, in order, before this one.
            await self.send_missed(last)
            return  # send_missed included this event too
        self.seqs.advance(self.session_id, seq)
        await self.send_json(messages.public(message))


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


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None
