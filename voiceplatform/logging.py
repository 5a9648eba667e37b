"""Structured logging shared by web, agent, Celery and the simulator.

- `log_context(session_id=…, room=…, turn=…, agent=…)` binds fields to the current
  task or thread (contextvars), so every line logged inside carries them.
- `JsonFormatter` emits one JSON object a line (LOG_FORMAT=json); `TextFormatter` is the
  human-readable format used by `make demo`.
- `RedactFilter` scrubs JWTs, API keys and bearer tokens from every line, whatever
  logged it, so a token never reaches a log file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

CONTEXT_FIELDS = ("session_id", "room", "turn", "agent", "request_id", "task_id", "task")
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("voice_log_context", default=None)  # type: ignore[assignment]

# JWTs (LiveKit tokens), our API keys (vp_…), bearer headers and sk- style provider keys.
_SECRET_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bvp_[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    # key=value / "key": "value" pairs whose name says secret (webhook secrets, api_secret=…).
    # Names may carry a prefix: webhook_secret, session-token, X-Api-Key.
    re.compile(
        r"(?i)(\b[\w-]*?(?:secret|password|passwd|api[_-]?key|token|authorization)[\"']?\s*[:=]\s*[\"']?)(?!bearer\s)[^\s\"',&;]{6,}"
    ),
    # credentials inside URLs (DATABASE_URL, REDIS_URL with a password)
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]{3,}(?=@)"),
]
_SECRET_SETTINGS = ("SECRET_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY")
_known_secrets: list[str] | None = None


def _configured_secrets() -> list[str]:
    """Values of secret settings, redacted wherever they appear (they have no telltale shape)."""
    global _known_secrets
    if _known_secrets is None:
        try:
            from django.conf import settings

            values = [str(getattr(settings, name, "") or "") for name in _SECRET_SETTINGS]
        except Exception:  # settings not configured (yet): try again on the next line
            return []
        _known_secrets = sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)
    return _known_secrets


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
        else:
            text = pattern.sub("[REDACTED]", text)
    for secret in _configured_secrets():
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Bind fields for the rest of the current task (an agent job binds once at start)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def push_log_context(*, inherit: bool = True, **fields: Any) -> contextvars.Token:
    """Bind fields until `pop_log_context(token)` (for hooks that cannot use a `with` block)."""
    base = (_context.get() or {}) if inherit else {}
    return _context.set({**base, **{k: v for k, v in fields.items() if v is not None}})


def pop_log_context(token: contextvars.Token) -> None:
    try:
        _context.reset(token)
    except ValueError:  # set in another context (a different thread ran the hook): just clear
        _context.set({})


def clear_log_context() -> None:
    """Forget every bound field (a pooled worker thread starting its next task)."""
    _context.set({})


def current_log_context() -> dict[str, Any]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        # Django logs 4xx/5xx responses (django.request) after the middleware chain has
        # returned, outside log_context; the request itself still knows its id.
        if getattr(record, "request_id", None) is None:
            request_id = getattr(getattr(record, "request", None), "request_id", None)
            if request_id is not None:
                record.request_id = request_id
        return True


class ExpectedSdkNoise(logging.Filter):
    """Drop libraries' lines that report a normal event as an error.

    - The livekit rtc SDK's ERROR lines for data channels closing with their room: every
      participant logs three of them when the platform deletes a room at the end of a call
      (livekit 1.1.21).
    - uvicorn-worker's "Error while closing socket [Errno 9]" on every stop of a web
      worker: gunicorn closed the listening socket first (uvicorn-worker 0.4.0).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Error while closing socket [Errno 9]"):
            return False
        return not ("data channel '" in message and "closed unexpectedly" in message)


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        extra = getattr(record, "data", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_text:
            payload["exc"] = record.exc_text
        elif record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(payload, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(ctx)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None) is not None]
        record.ctx = f" [{' '.join(parts)}]" if parts else ""
        return redact(super().format(record))


_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestContextMiddleware:
    """Binds a request id to every log line of a request."""

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        incoming = request.headers.get("X-Request-Id", "")
        # Accept a caller's id only if it is short and plain: it is echoed into every log line.
        request_id = incoming if _REQUEST_ID_RE.fullmatch(incoming) else f"req-{uuid.uuid4().hex[:16]}"
        request.request_id = request_id
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response
