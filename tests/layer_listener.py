"""A channel-layer listener for sync tests.

The pub/sub channel layer keeps one connection (and one set of subscriptions) per event
loop, and each `async_to_sync` call may run on a new loop, so a sync test cannot
subscribe in one call and receive in the next. This listener owns a thread with its own
loop, subscribes there, and hands what arrives (batches unpacked, in order) to the test.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from channels.layers import get_channel_layer

from sessions_app.live.messages import unbatch


class LayerListener:
    def __init__(self, *groups: str) -> None:
        self.groups = groups
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="layer-listener", daemon=True)
        self.thread.start()
        self.channel = asyncio.run_coroutine_threadsafe(self._subscribe(), self.loop).result(10)
        self.task = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)

    async def _subscribe(self) -> str:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        for group in self.groups:
            await layer.group_add(group, channel)
        return channel

    async def _listen(self) -> None:
        layer = get_channel_layer()
        while True:
            for message in unbatch(await layer.receive(self.channel)):
                self.messages.put(message)

    def receive(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next message (raises queue.Empty after `timeout` seconds)."""
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        async def leave() -> None:
            layer = get_channel_layer()
            for group in self.groups:
                await layer.group_discard(group, self.channel)
            await layer.flush()

        self.task.cancel()
        try:
            asyncio.run_coroutine_threadsafe(leave(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> LayerListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
