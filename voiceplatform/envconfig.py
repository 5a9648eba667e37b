"""Small typed helpers for reading settings from the environment.

A malformed value stops the process at start with a message that names the variable,
instead of surfacing later as an obscure error deep in a request.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false/1/0), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ImproperlyConfigured(f"{name} must be <= {maximum}, got {result}")
    return result


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {result}")
    return result


def env_url(name: str, default: str = "", *, schemes: tuple[str, ...]) -> str:
    """A URL whose scheme is one of `schemes`, or '' when unset and no default."""
    value = env_str(name, default)
    if not value:
        return ""
    parsed = urlparse(value)
    if parsed.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name} must start with one of {allowed}, got {value!r}")
    if parsed.scheme not in ("unix", "sqlite") and not parsed.hostname:
        raise ImproperlyConfigured(f"{name} has no host: {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
