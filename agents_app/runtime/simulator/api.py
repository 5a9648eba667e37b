"""A small async client for the platform's HTTP API, as a client app would use it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

# A client app retries a 503 with Retry-After; the simulator does so for up to this long.
RETRY_UNAVAILABLE_SECONDS = 60.0


class PlatformApiError(Exception):
    """A non-2xx answer, with the API's `{"code", "message"}` when it sent one."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.retry_after = retry_after  # seconds, when the answer asked to be retried (503)


def _seconds(header: str) -> float:
    """Retry-After in seconds, at most 5 (a date or garbage counts as 1)."""
    try:
        return min(max(float(header), 0.1), 5.0)
    except ValueError:
        return 1.0


class PlatformClient:
    def __init__(self, *, base_url: str, api_key: str, agent_api_key: str = "", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._agent_api_key = agent_api_key
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, method: str, path: str, *, key: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """One API call. A 503 (the platform's database is briefly unavailable, docs/api.md)
        is retried after its Retry-After, for up to RETRY_UNAVAILABLE_SECONDS in all."""
        deadline = time.monotonic() + RETRY_UNAVAILABLE_SECONDS
        while True:
            try:
                return await self._request_once(method, path, key=key, json=json, headers=headers)
            except PlatformApiError as error:
                if error.retry_after is None or time.monotonic() + error.retry_after > deadline:
                    raise
                await asyncio.sleep(error.retry_after)

    async def _request_once(
        self, method: str, path: str, *, key: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        all_headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        url = f"{self.base_url}/api/v1{path}"
        try:
            async with self._session.request(method, url, json=json, headers=all_headers) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status == 503 and "Retry-After" in response.headers:
                    body = body if isinstance(body, dict) else {}
                    raise PlatformApiError(
                        503,
                        str(body.get("code", "unavailable")),
                        f"{method} {path}",
                        retry_after=_seconds(response.headers["Retry-After"]),
                    )
                if response.status >= 400:
                    body = body if isinstance(body, dict) else {}
                    detail = str(body.get("message") or body.get("detail") or response.reason or "")
                    raise PlatformApiError(
                        response.status, str(body.get("code", "http_error")), f"{method} {path}: {detail}"
                    )
                return body
        except aiohttp.ClientConnectionError as exc:
            raise PlatformApiError(0, "unreachable", f"cannot reach {url}: {exc}") from exc

    async def session_create(
        self, *, agent: str, user_id: str, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._request(
            "POST",
            "/sessions",
            key=self._api_key,
            json={"agent": agent, "user_id": user_id, "metadata": metadata or {}},
        )

    async def session_get(self, session_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/sessions/{session_id}", key=self._api_key)

    async def session_reconnect(self, session_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/sessions/{session_id}/reconnect", key=self._api_key)

    async def session_interrupt(self, session_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/sessions/{session_id}/interrupt", key=self._api_key)

    async def session_end(self, session_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/sessions/{session_id}/end", key=self._api_key)

    async def turn_heard(
        self, session_id: str, index: int, *, heard_gap_ms: float, barge_in_ms: float | None = None
    ) -> dict[str, Any]:
        """Report what the caller heard of one of its turns (idempotent per turn)."""
        return await self._request(
            "PUT",
            f"/sessions/{session_id}/turns/{index}/heard",
            key=self._api_key,
            json={"heard_gap_ms": heard_gap_ms, "barge_in_ms": barge_in_ms},
        )

    async def tool_invoke(self, *, name: str, session_id: str, key: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tools API, as an agent outside the platform calls it (agent-scope key)."""
        if not self._agent_api_key:
            raise PlatformApiError(0, "no_agent_key", "retrying a tool call needs an agent-scope API key")
        return await self._request(
            "POST",
            f"/tools/{name}/invoke",
            key=self._agent_api_key,
            json={"session_id": session_id, "arguments": arguments},
            headers={"Idempotency-Key": key},
        )
