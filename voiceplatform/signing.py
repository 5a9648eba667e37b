"""HMAC signatures the platform puts on what it sends out (Stripe's scheme).

`X-Voice-Signature: t=<unix seconds>,v1=<hex hmac-sha256 of "<t>." + payload>`. Post-call
report webhooks sign their body (sessions_app/reports.py); HTTP tools sign the identity
the platform asserts together with the request (tools_app/executors.py). A receiver
recomputes the HMAC over the same payload, compares in constant time and refuses
timestamps older than the tolerance (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Voice-Signature"
TOLERANCE_SECONDS = 300


def signature(*, secret: str, timestamp: int, payload: bytes) -> str:
    """`t=<ts>,v1=<hex hmac-sha256 of "<ts>." + payload>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_verify(
    *, secret: str, header: str, payload: bytes, tolerance_s: int = TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """What a receiver does (our tests too): check the HMAC and the timestamp's age."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        received = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = signature(secret=secret, timestamp=timestamp, payload=payload).split("v1=", 1)[1]
    return hmac.compare_digest(expected, received)
