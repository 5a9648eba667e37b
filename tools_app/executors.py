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

Identity (issue 17, item 8): within a voice session every request says which session,
caller (`VoiceSession.caller_key`, namespaced by the client) and agent it is for, in
`X-Voice-Session`, `X-Voice-Caller`, `X-Voice-Agent`. The model chooses the arguments;
the platform asserts these. With `http_signing_secret` set, `X-Voice-Signature` signs
them with the request (voiceplatform/signing.py; payload: `tool_request_payload`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yarl
from django.conf import settings

from tools_app.models import RESERVED_HEADER_NAMES, TOOL_SECRET_PREFIX, ToolDefinition, tool_secret_name_allowed
from voiceplatform import outbound, signing

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0
RETRY_AFTER_MAX_SECONDS = 5.0
MAX_RESPONSE_CHARS = 20_000
# What the platform asserts about a call, header by header (values percent-encoded UTF-8).
IDENTITY_HEADERS = {"session": "X-Voice-Session", "caller": "X-Voice-Caller", "agent": "X-Voice-Agent"}


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


def _secret_env(tool: ToolDefinition, env_name: str) -> str | None:
    if not tool_secret_name_allowed(env_name):
        # Also at call time: a row saved before the rule, or written around the admin.
        raise ToolExecutionError(
            f"The tool {tool.name!r} may not send {env_name!r}: secret headers read only "
            f"{TOOL_SECRET_PREFIX}… variables.",
            attempts=0,
        )
    return os.environ.get(env_name)


def http_headers_build(*, tool: ToolDefinition, key: str, identity: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain headers, secret headers read from the environment now, the Idempotency-Key
    and the identity headers (the signature is added per attempt: `_signed`)."""
    # The key, the identity and the signature are the platform's to set: a tool's own
    # headers of those names (a row written around the admin's check) are dropped.
    headers = {
        str(k): str(v) for k, v in (tool.http_headers or {}).items() if str(k).lower() not in RESERVED_HEADER_NAMES
    }
    missing = []
    secret_names = [
        (str(h), str(env))
        for h, env in (tool.http_secret_headers or {}).items()
        if str(h).lower() not in RESERVED_HEADER_NAMES
    ]
    if tool.http_signing_secret:
        secret_names.append(("", str(tool.http_signing_secret)))
    for header, env_name in secret_names:
        value = _secret_env(tool, env_name)
        if not value:  # unset or empty: an empty credential or signing key is a mistake
            missing.append(env_name)
        elif header:
            headers[header] = value
    if missing:
        # Fail before sending: a request without its credentials is a guaranteed 401.
        raise ToolExecutionError(
            f"The tool {tool.name!r} is not configured: environment variable(s) {', '.join(missing)} not set.",
            attempts=0,
        )
    headers["Idempotency-Key"] = key
    headers.setdefault("Accept", "application/json")
    for field, header in IDENTITY_HEADERS.items():
        if identity and identity.get(field):
            headers[header] = quote(str(identity[field]), safe=":@+-._~")
    return headers


def tool_request_payload(*, method: str, query: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """What X-Voice-Signature signs: the method, the raw query string, the Idempotency-Key
    and the three identity headers as sent (empty when absent), one per line, then the body.

    A receiver rebuilds it from the request it got (docs/tools.md has a verifier).
    """
    lines = [method.upper(), query, headers.get("Idempotency-Key", "")]
    lines += [headers.get(header, "") for header in IDENTITY_HEADERS.values()]
    return "\n".join([*lines, ""]).encode() + body


def _signed(tool: ToolDefinition, headers: dict[str, str], *, method: str, query: str, body: bytes) -> dict[str, str]:
    """The headers with a fresh X-Voice-Signature (each attempt has its own timestamp)."""
    if not tool.http_signing_secret:
        return headers
    secret = os.environ.get(str(tool.http_signing_secret), "")
    payload = tool_request_payload(method=method, query=query, headers=headers, body=body)
    return {
        **headers,
        signing.SIGNATURE_HEADER: signing.signature(secret=secret, timestamp=int(time.time()), payload=payload),
    }


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


def _request_target(tool: ToolDefinition, method: str, arguments: dict[str, Any]) -> tuple[yarl.URL, str, bytes]:
    """The URL (sent as built), its raw query string and the body: what gets signed is
    exactly what goes on the wire."""
    base = yarl.URL(tool.http_url)
    query = base.raw_query_string
    body = b""
    if method in ("GET", "DELETE"):
        params = {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in arguments.items()}
        if params:
            query = "&".join(part for part in (query, urlencode(params, quote_via=quote)) if part)
    else:
        body = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode()
    url = str(base.with_query(None).with_fragment(None)) + (f"?{query}" if query else "")
    return yarl.URL(url, encoded=True), query, body


async def http_execute(
    *, tool: ToolDefinition, arguments: dict[str, Any], key: str, identity: Mapping[str, str] | None = None
) -> HttpResult:
    """Send the request (with its retries) within TOOL_HTTP_TOTAL_SECONDS in all.

    Through voiceplatform.outbound: no internal address unless admitted, no redirects
    (a redirect would carry the secret headers to a host nobody configured), and a
    response read up to 1 MiB.
    """
    headers = http_headers_build(tool=tool, key=key, identity=identity)
    method = (tool.http_method or "POST").upper()
    url, query, body = _request_target(tool, method, arguments)
    request_kwargs: dict[str, Any] = {"allow_redirects": False}
    if method not in ("GET", "DELETE"):
        headers["Content-Type"] = "application/json"
        request_kwargs["data"] = body
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
                    method, url, headers=_signed(tool, headers, method=method, query=query, body=body),
                    timeout=aiohttp.ClientTimeout(total=attempt_timeout), **request_kwargs,
                ) as resp:  # fmt: skip
                    if 300 <= resp.status < 400:
                        raise ToolExecutionError(
                            f"The tool {tool.name!r} answered a redirect (HTTP {resp.status} to "
                            f"{resp.headers.get('Location', '?')!r}), which is not followed.",
                            attempts=attempt + 1,
                        )
                    # Not `body`: that is the request's, signed again by the next attempt.
                    text = (await outbound.read_capped(resp)).decode(resp.charset or "utf-8", errors="replace")
                    if resp.status < 400:
                        return HttpResult(result=_decode(text, resp.content_type or ""), attempts=attempt + 1)
                    last_problem = f"HTTP {resp.status} {resp.reason or ''}".strip()
                    if text:
                        last_problem += f": {text[:300]}"
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
