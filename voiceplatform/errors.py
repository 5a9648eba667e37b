"""Domain errors: what went wrong, in the platform's terms, raised by services.

Services never speak HTTP. The API edge (voiceplatform/api_errors.py) maps each class to
its status and the one JSON error shape {"code", "message", "details"}; another caller
(a management command, a consumer, a task) catches them by meaning.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal the caller can act on: a stable `code`, a sentence, machine-readable details."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Malformed(DomainError):
    """The input cannot be read at all (an unsigned or unparsable webhook)."""


class InvalidInput(DomainError):
    """Readable input that breaks a rule (unknown agent, metadata too large)."""


class Unauthenticated(DomainError):
    """The caller did not prove who it is (a webhook's signature)."""


class Forbidden(DomainError):
    """Known caller, not allowed this (a number outside an API key's call destinations)."""


class NotFound(DomainError):
    """No such thing, or not for this caller."""


class Conflict(DomainError):
    """The thing is in a state that does not allow this (an ended session)."""


class LimitReached(DomainError):
    """Too many: a rate or a cap. `retry_after` seconds when waiting helps."""

    def __init__(self, code: str, message: str, details: Any = None, *, retry_after: int | None = None) -> None:
        super().__init__(code, message, details)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A service the operation needs failed (the LiveKit server refused a dispatch)."""
