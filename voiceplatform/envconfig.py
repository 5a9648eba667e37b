"""Small typed helpers for reading settings from the environment.

A malformed value stops the process at start with a message that names the variable,
instead of surfacing later as an obscure error deep in a request.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    """Unset or empty (a copied .env.example) means the default, as for every other type."""
    value = _raw(name)
    if value is None or value == "":
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


def env_endpoints(name: str) -> dict[str, dict[str, str]]:
    """Named OpenAI-compatible endpoints: JSON {"name": {"base_url": "https://…/v1",
    "api_key_env": "VAR"}} (or {"name": "https://…/v1"} for a server that needs no key)."""
    import json
    import re

    value = _raw(name)
    if not value:
        return {}
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object of name → endpoint: {exc}") from exc
    if not isinstance(data, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object of name → endpoint")
    endpoints: dict[str, dict[str, str]] = {}
    for key, spec in data.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", str(key)):
            raise ImproperlyConfigured(f"{name}: endpoint name {key!r} must be lowercase letters, digits, - or _")
        spec = {"base_url": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or set(spec) - {"base_url", "api_key_env"}:
            raise ImproperlyConfigured(f"{name}: endpoint {key!r} must be a URL or {{base_url, api_key_env}}")
        url = str(spec.get("base_url") or "")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ImproperlyConfigured(f"{name}: endpoint {key!r} needs an http(s) base_url, got {url!r}")
        key_env = str(spec.get("api_key_env") or "")
        if key_env and not re.fullmatch(r"[A-Z][A-Z0-9_]*", key_env):
            raise ImproperlyConfigured(f"{name}: endpoint {key!r} api_key_env must be a variable name")
        endpoints[str(key)] = {"base_url": url, "api_key_env": key_env}
    return endpoints


def parsed_networks(networks: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of a setting that `env_networks` read (OUTBOUND_ALLOWED_NETWORKS,
    METRICS_ALLOWED_NETWORKS), as objects an address can be tested against."""
    return [ipaddress.ip_network(n, strict=False) for n in networks]


def env_networks(name: str) -> list[str]:
    """Comma-separated CIDR networks (an address alone is a /32 or /128)."""
    networks = []
    for item in env_list(name, []):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a network (e.g. 10.0.0.0/8): {exc}") from exc
    return networks
