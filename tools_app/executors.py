"""How a tool runs once the ledger has claimed its key: HTTP requests and built-ins.

HTTP retry rule (docs/tools.md):
- Every attempt carries the same `Idempotency-Key` header (the ledger key).
- Retried: 429, 502, 503, 504 (the server asks us to come back, or a gateway failed),
  and failures to connect (the request never left). The server is expected to honour
  the Idempotency-Key, as the IETF draft asks, so these retries cannot double an effect.
- Retried only when the tool is marked idempotent: timeouts and connections dropped
  after the request was sent. The request may have been processed, and we do not know
  whether the server de-duplicates on the key.
- Never retried: any other 4xx or 5xx (the request was understood and refused).
Backoff: exponential with full jitter, honouring a numeric Retry-After (capped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
from django.conf import settings

from tools_app.models import TOOL_SECRET_PREFIX, ToolDefinition, tool_secret_name_allowed
from voiceplatform import outbound

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0
RETRY_AFTER_MAX_SECONDS = 5.0
MAX_RESPONSE_CHARS = 20_000


class ToolExecutionError(Exception):
    """The tool ran (or tried to) and failed; `message` is shown to the LLM / API caller."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


@dataclass(frozen=True)
class HttpResult:
    result: dict[str, Any]
    attempts: int


def http_headers_build(*, tool: ToolDefinition, key: str) -> dict[str, str]:
    """Plain headers, secret headers read from the environment now, and the Idempotency-Key."""
    headers = {str(k): str(v) for k, v in (tool.http_headers or {}).items()}
    missing = []
    for header, env_name in (tool.http_secret_headers or {}).items():
        if not tool_secret_name_allowed(str(env_name)):
            # Also at call time: a row saved before the rule, or written around the admin.
            raise ToolExecutionError(
                f"The tool {tool.name!r} may not send {env_name!r}: secret headers read only "
                f"{TOOL_SECRET_PREFIX}… variables.",
                attempts=0,
            )
        value = os.environ.get(str(env_name))
        if value is None:
            missing.append(str(env_name))
        else:
            headers[str(header)] = value
    if missing:
        # Fail before sending: a request without its credentials is a guaranteed 401.
        raise ToolExecutionError(
            f"The tool {tool.name!r} is not configured: environment variable(s) {', '.join(missing)} not set.",
            attempts=0,
        )
    headers["Idempotency-Key"] = key
    headers.setdefault("Accept", "application/json")
    return headers


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), RETRY_AFTER_MAX_SECONDS)
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    return random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * (2**attempt)))


def _decode(body: str, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if "json" in content_type:
        try:
            value = json.loads(body)
        except ValueError:
            return {"text": body[:MAX_RESPONSE_CHARS]}
        return value if isinstance(value, dict) else {"data": value}
    return {"text": body[:MAX_RESPONSE_CHARS]}


async def http_execute(*, tool: ToolDefinition, arguments: dict[str, Any], key: str) -> HttpResult:
    """Send the request (with its retries) within TOOL_HTTP_TOTAL_SECONDS in all.

    Through voiceplatform.outbound: no internal address unless admitted, no redirects
    (a redirect would carry the secret headers to a host nobody configured), and a
    response read up to 1 MiB.
    """
    headers = http_headers_build(tool=tool, key=key)
    method = (tool.http_method or "POST").upper()
    request_kwargs: dict[str, Any] = {"allow_redirects": False}
    if method in ("GET", "DELETE"):
        request_kwargs["params"] = {
            k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in arguments.items()
        }
    else:
        request_kwargs["json"] = arguments
    tries = 1 + int(tool.max_retries)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(settings.TOOL_HTTP_TOTAL_SECONDS)
    last_problem = ""
    async with outbound.client_session(timeout=aiohttp.ClientTimeout(total=None)) as http:
        for attempt in range(tries):
            retry_after: str | None = None
            can_retry = attempt + 1 < tries
            attempt_timeout = min(float(tool.timeout_seconds), max(0.1, deadline - loop.time()))
            try:
                async with http.request(
                    method, tool.http_url, headers=headers, timeout=aiohttp.ClientTimeout(total=attempt_timeout),
                    **request_kwargs,
                ) as resp:  # fmt: skip
                    if 300 <= resp.status < 400:
                        raise ToolExecutionError(
                            f"The tool {tool.name!r} answered a redirect (HTTP {resp.status} to "
                            f"{resp.headers.get('Location', '?')!r}), which is not followed.",
                            attempts=attempt + 1,
                        )
                    body = (await outbound.read_capped(resp)).decode(resp.charset or "utf-8", errors="replace")
                    if resp.status < 400:
                        return HttpResult(result=_decode(body, resp.content_type or ""), attempts=attempt + 1)
                    last_problem = f"HTTP {resp.status} {resp.reason or ''}".strip()
                    if body:
                        last_problem += f": {body[:300]}"
                    if resp.status not in RETRY_STATUSES:
                        raise ToolExecutionError(f"The tool {tool.name!r} failed: {last_problem}", attempts=attempt + 1)
                    retry_after = resp.headers.get("Retry-After")
            except ToolExecutionError:
                raise
            except outbound.ResponseTooLarge as exc:
                raise ToolExecutionError(f"The tool {tool.name!r} failed: {exc}.", attempts=attempt + 1) from exc
            except aiohttp.ClientConnectorError as exc:
                refused = outbound.refusal(exc)
                if refused is not None:
                    raise ToolExecutionError(
                        f"The tool {tool.name!r} may not call {tool.http_url!r}: {refused}", attempts=attempt + 1
                    ) from exc
                # Could not connect: nothing was sent, so retrying is always safe.
                last_problem = f"could not connect ({exc.os_error or exc})"
            except (TimeoutError, aiohttp.ServerTimeoutError):
                last_problem = f"no answer within {tool.timeout_seconds:g} s"
                if not tool.idempotent:
                    last_problem += " (the request may still have taken effect, so it was not retried)"
                    can_retry = False
            except aiohttp.ClientError as exc:
                last_problem = f"connection failed ({type(exc).__name__}: {exc})"
                if not tool.idempotent:
                    can_retry = False
            delay = _backoff(attempt, retry_after)
            if can_retry and loop.time() + delay + 0.1 >= deadline:
                last_problem += f" (out of the {settings.TOOL_HTTP_TOTAL_SECONDS:g} s a tool call may take in all)"
                can_retry = False
            if not can_retry:
                break
            logger.info("retrying tool %s in %.2fs after %s", tool.name, delay, last_problem)
            await asyncio.sleep(delay)
    attempts = attempt + 1
    plural = "s" if attempts != 1 else ""
    raise ToolExecutionError(
        f"The tool {tool.name!r} failed after {attempts} attempt{plural}: {last_problem}.", attempts=attempts
    )
