"""Zulip-style checks of live messages: every one the tests make is validated.

`LiveMessageCheck.install` wraps the channel layer's `group_send` and the dashboard
consumers' `send` and `send_json`, so each channel-layer message published and each
websocket frame sent during a test is checked against `sessions_app.live.schemas` by its
`type`. A message
that does not fit (or has an unknown type) fails the test that sent it, even when the
code that sent it swallowed the error (publishing never raises; a page's pump logs).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from sessions_app.live.schemas import LiveMessageError, check


class LiveMessageCheck:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: Counter[str] = Counter()

    def __call__(self, message: Any, where: str) -> None:
        try:
            check(message)
        except LiveMessageError as exc:
            self.problems.append(f"{where}: {exc}")
            raise
        self.checked[message["type"]] += 1
        if message["type"] in ("batch", "live.batch"):
            self.checked.update(item["type"] for item in message["messages"])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from channels_redis.pubsub import RedisPubSubLoopLayer

        from sessions_app.live.consumers import WatchConsumer

        group_send, send, send_json = RedisPubSubLoopLayer.group_send, WatchConsumer.send, WatchConsumer.send_json

        async def checked_group_send(layer: Any, group: str, message: dict[str, Any]) -> None:
            self(message, f"group_send to {group!r}")
            await group_send(layer, group, message)

        async def checked_send(
            consumer: Any, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
        ) -> None:
            if text_data is not None:
                self(json.loads(text_data), f"websocket frame of {type(consumer).__name__}")
            await send(consumer, text_data=text_data, bytes_data=bytes_data, close=close)

        async def checked_send_json(consumer: Any, content: Any, close: bool = False) -> None:
            # send_json reaches the socket through the parent class's send, not checked_send.
            self(content, f"websocket frame of {type(consumer).__name__}")
            await send_json(consumer, content, close=close)

        monkeypatch.setattr(RedisPubSubLoopLayer, "group_send", checked_group_send)
        monkeypatch.setattr(WatchConsumer, "send", checked_send)
        monkeypatch.setattr(WatchConsumer, "send_json", checked_send_json)

    def verify(self) -> None:
        assert not self.problems, "live messages that do not fit their schema:\n" + "\n".join(self.problems)
