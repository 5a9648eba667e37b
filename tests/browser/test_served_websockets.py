"""Websocket frame limits through the real web server (uvicorn's websockets, not a test communicator).

A staff member's dashboard socket is closed with 4413 by the consumer for a frame over
64 KiB, answered for one of exactly 64 KiB, and closed by the server itself with 1009 for
a message over WS_MAX_MESSAGE_BYTES, which it never buffers whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from sessions_app.live.consumers import CLOSE_TOO_LARGE, MAX_INBOUND_FRAME_BYTES
from tests.browser.conftest import ServedPlatform, serve_platform, stop_platform
from voiceplatform.webserver import WS_MAX_MESSAGE_BYTES

STAFF_COOKIE = """
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
user, _ = User.objects.get_or_create(username="ws-limits", defaults={"is_staff": True})
client = Client()
client.force_login(user)
result = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[ServedPlatform]:
    served = serve_platform(tmp_path_factory.mktemp("wslimits"), name="wslimits")
    yield served
    stop_platform(served)


def _send_frame(site: ServedPlatform, payload: str) -> tuple[str, int | None, dict | None]:
    """Connect to /ws/dashboard/ as staff, send one text frame; what came back after the snapshot."""
    import aiohttp

    cookie = site.orm(STAFF_COOKIE)

    async def run() -> tuple[str, int | None, dict | None]:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(
                site.base_url.replace("http", "ws", 1) + "/ws/dashboard/",
                headers={"Cookie": cookie, "Origin": site.base_url},
                max_msg_size=0,
            ) as ws:
                snapshot = await ws.receive_json(timeout=30)
                assert snapshot["type"] == "snapshot"
                await ws.send_str(payload)
                while True:
                    frame = await ws.receive(timeout=30)
                    if frame.type == aiohttp.WSMsgType.TEXT:
                        message = json.loads(frame.data)
                        if message.get("type") in ("pong", "error"):
                            return "answered", None, message
                        continue  # live traffic of other tests is not expected, but harmless
                    if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        return "closed", ws.close_code, None
                    raise AssertionError(f"unexpected frame {frame.type}")

    return asyncio.run(run())


def _padded_ping(size: int) -> str:
    """A JSON ping of exactly `size` bytes (ASCII)."""
    head = '{"type": "ping", "pad": "'
    return head + "x" * (size - len(head) - 2) + '"}'


def test_a_frame_of_exactly_64_kib_is_answered(site):
    outcome, _, message = _send_frame(site, _padded_ping(MAX_INBOUND_FRAME_BYTES))
    assert outcome == "answered" and message["type"] == "pong"


def test_a_frame_over_64_kib_is_closed_by_the_consumer_with_4413(site):
    assert _send_frame(site, _padded_ping(MAX_INBOUND_FRAME_BYTES + 1))[:2] == ("closed", CLOSE_TOO_LARGE)


def test_a_message_over_the_servers_limit_is_closed_with_1009(site):
    assert _send_frame(site, _padded_ping(WS_MAX_MESSAGE_BYTES + 1))[:2] == ("closed", 1009)
