"""Channel-layer group names and non-blocking publishing of live events.

Group names come from these helpers only. Messages are dicts with a dotted `type`
(`session.updated`, `turn.completed`, `event.added`, …); the Channels consumers turn
the dots into handler names (`session_updated`).

Publishing never blocks a caller for long and never raises: the DB is the source of
truth and a dashboard resyncs from it, so a failed or full publish is dropped and
counted in `voice_dashboard_events_dropped_total`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"
PUBLISH_TIMEOUT_S = 0.5


def session_group(session_id: UUID | str) -> str:
    """Dashboards watching one session."""
    return f"session.{session_id}"


def agent_control_group(session_id: UUID | str) -> str:
    """The agent job serving a session listens here (client interrupts in local mode)."""
    return f"agent.{session_id}"


def _count_drop(reason: str) -> None:
    try:
        from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

        DASHBOARD_EVENTS_DROPPED.labels(reason=reason).inc()
    except Exception:  # metrics must never break publishing
        logger.debug("could not count dropped event", exc_info=True)


async def apublish(groups: Iterable[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            await asyncio.wait_for(layer.group_send(group, message), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            _count_drop(type(exc).__name__)
            logger.warning("dropped live event %s for %s: %s", message.get("type"), group, exc)


def publish(groups: Iterable[str], message: dict[str, Any]) -> None:
    """Sync wrapper for services; call it from `transaction.on_commit`."""
    groups = list(groups)
    try:
        async_to_sync(apublish)(groups, message)
    except Exception as exc:
        _count_drop(type(exc).__name__)
        logger.warning("dropped live event %s: %s", message.get("type"), exc)


def session_groups(session_id: UUID | str) -> list[str]:
    return [DASHBOARD_GROUP, session_group(session_id)]


class _BackgroundPublisher:
    """One daemon thread with its own event loop that publishes live events off the request.

    Waiting for the channel layer inside the request halved session-creation throughput
    (bench/token_api.py). Live events are best effort by contract (the DB is the truth and
    each message carries `seq`, so a dashboard resyncs on a gap), so the request only hands
    them over. Messages of one batch are published in order.
    """

    def __init__(self) -> None:
        self._loop: Any = None
        self._lock = threading.Lock()

    def _ensure_loop(self) -> Any:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="live-event-publisher", daemon=True).start()
                self._loop = loop
            return self._loop

    def submit(self, groups: list[str], messages: list[dict[str, Any]]) -> None:
        async def send() -> None:
            for message in messages:
                await apublish(groups, message)  # never raises; drops are counted

        try:
            asyncio.run_coroutine_threadsafe(send(), self._ensure_loop())
        except Exception:  # as publish(): the DB is the truth, a dashboard resyncs
            logger.warning("dropped live events handed to the background publisher", exc_info=True)


_background_publisher = _BackgroundPublisher()


def publish_in_background(groups: list[str], messages: list[dict[str, Any]]) -> None:
    """Hand a batch of messages (published in order) to a background thread; never waits."""
    _background_publisher.submit(groups, messages)
