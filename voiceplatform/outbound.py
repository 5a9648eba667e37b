"""Requests the platform sends to URLs it was configured with: HTTP tools, report webhooks.

Those URLs come from the admin, so a request must not reach inside the deployment
(loopback, private ranges, link-local, where a cloud's metadata service answers) unless
the operator admits a network in OUTBOUND_ALLOWED_NETWORKS (the demo's and the tests'
local servers). The check runs on the address actually connected to, through aiohttp's
`socket_factory` (a name that resolves to 10.0.0.5, an IP literal, a rebinding DNS: all the
same). Redirects are never followed, and a response is read up to a byte cap.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
from django.conf import settings

from voiceplatform.envconfig import parsed_networks

MAX_RESPONSE_BYTES = 1 << 20


class OutboundRefused(OSError):
    """The address is inside the deployment and not admitted (OUTBOUND_ALLOWED_NETWORKS)."""


class ResponseTooLarge(Exception):
    pass


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return parsed_networks(getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", []))


def address_allowed(address: str) -> bool:
    """A public address, or one inside a network the operator admitted."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in _allowed_networks()):
        return True
    return ip.is_global and not ip.is_multicast


def _guarded_socket(addr_info: Any) -> socket.socket:
    family, type_, proto, _, sockaddr = addr_info
    if not address_allowed(str(sockaddr[0])):
        raise OutboundRefused(
            f"{sockaddr[0]} is an internal address; requests to it are refused "
            "(an operator can admit a network in OUTBOUND_ALLOWED_NETWORKS)"
        )
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setblocking(False)
    return sock


def client_session(*, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """An aiohttp session whose every connection passes the address check."""
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(socket_factory=_guarded_socket))


def refusal(exc: BaseException) -> OutboundRefused | None:
    """The OutboundRefused behind an aiohttp connection error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OutboundRefused):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None


async def read_capped(response: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The body, or ResponseTooLarge once it passes `limit` bytes (never reads more)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the response is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
