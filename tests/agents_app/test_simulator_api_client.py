"""The simulator's API client retries a 503 that carries Retry-After, as a client app should."""

from __future__ import annotations

import pytest
from aiohttp import web

from agents_app.runtime.simulator import api
from tests.ports import free_port


async def _serve(answers: list[tuple[int, dict[str, str]]]):
    """A server that gives these (status, headers) answers in turn, then 200."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        status, headers = answers.pop(0) if answers else (200, {})
        body = {"id": "s1"} if status == 200 else {"code": "database_unavailable", "message": "try again"}
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/api/v1/sessions/{id}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", seen


async def test_a_503_with_retry_after_is_retried_until_it_succeeds():
    runner, base, seen = await _serve([(503, {"Retry-After": "0.1"}), (503, {"Retry-After": "0.1"})])
    client = api.PlatformClient(base_url=base, api_key="k")
    try:
        assert await client.session_get("s1") == {"id": "s1"}
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == ["Bearer k"] * 3


async def test_it_gives_up_after_the_retry_window_and_a_503_without_retry_after_is_not_retried(monkeypatch):
    monkeypatch.setattr(api, "RETRY_UNAVAILABLE_SECONDS", 1.0)
    runner, base, seen = await _serve([(503, {"Retry-After": "0.1"})] * 100)
    client = api.PlatformClient(base_url=base, api_key="k")
    try:
        with pytest.raises(api.PlatformApiError) as raised:
            await client.session_get("s1")
        assert raised.value.status == 503 and raised.value.code == "database_unavailable"
        # Retried (each after at least 0.1 s) within the 1 s window, then given up.
        assert 2 <= len(seen) <= 11, seen
    finally:
        await client.close()
        await runner.cleanup()

    runner, base, seen = await _serve([(503, {})])
    client = api.PlatformClient(base_url=base, api_key="k")
    try:
        with pytest.raises(api.PlatformApiError) as raised:
            await client.session_get("s1")
        assert raised.value.status == 503 and len(seen) == 1
    finally:
        await client.close()
        await runner.cleanup()
