"""Per-client rate limits shared by every web process (Redis, sliding-window counter).

A sliding window (this minute's count plus the previous minute's, weighted by how much
of it still overlaps) avoids the double burst a fixed window allows at its edge. The
check and the increment run in one Lua script, so concurrent processes cannot both take
the last slot, and refused requests are not counted (a client that waits `Retry-After`
seconds gets through).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
KEY_PREFIX = "vp:ratelimit"

# KEYS[1] = previous window, KEYS[2] = current window; ARGV = limit, elapsed fraction, ttl,
# mode: "hit" (check, and count if allowed) or "refund" (give back one counted request).
_SCRIPT = """
local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
if ARGV[4] == 'refund' then
  if cur > 0 then
    redis.call('DECR', KEYS[2])
  end
  return {1, prev, cur}
end
if prev * (1 - elapsed) + cur + 1 > limit then
  return {0, prev, cur}
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return {1, prev, cur + 1}
"""

_lock = threading.Lock()
_client: redis.Redis | None = None
_script = None


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after: int = 0


def _redis() -> tuple[redis.Redis, object]:
    global _client, _script
    with _lock:
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
            _script = _client.register_script(_SCRIPT)
        return _client, _script


def _retry_after(*, limit: int, prev: int, cur: int, elapsed: float) -> int:
    """Seconds until one more request fits under the sliding estimate."""
    window = WINDOW_SECONDS
    into_window = elapsed * window
    if cur + 1 > limit:
        # Wait for the next window, then until this window's weight has decayed enough.
        need = 1 - (limit - 1) / cur if cur else 0
        wait = (window - into_window) + max(0.0, need) * window
    else:
        need = 1 - (limit - cur - 1) / prev if prev else 0
        wait = max(0.0, need) * window - into_window
    return max(1, math.ceil(round(wait, 6)))  # round first: 5.0000001 s is 5 s, not 6


def rate_limit_hit(*, scope: str, subject: str, limit_per_minute: int, mode: str = "hit") -> RateDecision:
    """Count one request of `subject` against `limit_per_minute`; say if it may proceed.

    `mode="refund"` gives one counted request back (in this window): for limits on what
    failed, known only after the request (login attempts).
    If Redis cannot be reached the request is allowed (and logged): a rate limiter must
    not turn a Redis hiccup into an outage of session creation.
    """
    now = time.time()
    window_index = int(now // WINDOW_SECONDS)
    elapsed = (now % WINDOW_SECONDS) / WINDOW_SECONDS
    base = f"{KEY_PREFIX}:{scope}:{subject}"
    try:
        _, script = _redis()
        allowed, prev, cur = script(  # type: ignore[operator]
            keys=[f"{base}:{window_index - 1}", f"{base}:{window_index}"],
            args=[limit_per_minute, f"{elapsed:.6f}", WINDOW_SECONDS * 2 + 5, mode],
        )
    except redis.RedisError:
        logger.warning("rate limiter unavailable; allowing %s %s", scope, subject, exc_info=True)
        return RateDecision(allowed=True)
    if allowed:
        return RateDecision(allowed=True)
    return RateDecision(
        allowed=False,
        retry_after=_retry_after(limit=limit_per_minute, prev=int(prev), cur=int(cur), elapsed=elapsed),
    )


# Per minute, per API client or browser user, by action (docs/security.md). All fail open:
# a Redis outage must not stop calls; the concurrent-session cap (from the database) and
# the login throttle still bound what a client can do.
ACTION_LIMIT_SETTINGS = {
    "session_create": "SESSION_CREATE_RATE_PER_MINUTE",
    "session_reconnect": "SESSION_RECONNECT_RATE_PER_MINUTE",
    "session_interrupt": "SESSION_INTERRUPT_RATE_PER_MINUTE",
    "session_end": "SESSION_END_RATE_PER_MINUTE",
    "tool_invoke": "TOOL_INVOKE_RATE_PER_MINUTE",
    "call_place": "CALL_PLACE_RATE_PER_MINUTE",
}


def action_rate_check(*, action: str, subject: str) -> RateDecision:
    limit = int(getattr(settings, ACTION_LIMIT_SETTINGS[action]))
    return rate_limit_hit(scope=action, subject=subject, limit_per_minute=limit)


def action_rate_enforce(*, action: str, subject: str, what: str) -> None:
    """For the API operations: over the limit is `rate_limited` (a 429 with Retry-After)."""
    from voiceplatform.errors import LimitReached

    decision = action_rate_check(action=action, subject=subject)
    if not decision.allowed:
        raise LimitReached(
            "rate_limited",
            f"Too many {what}; retry in {decision.retry_after} s.",
            {"retry_after": decision.retry_after},
            retry_after=decision.retry_after,
        )


def session_create_rate_check(*, subject: str) -> RateDecision:
    return action_rate_check(action="session_create", subject=subject)


def _login_limits(*, ip: str, username: str) -> list[tuple[str, str, int]]:
    per_user = int(settings.LOGIN_ATTEMPTS_PER_MINUTE)
    return [("login_ip", ip, per_user * 3), ("login_user", username.lower()[:150], per_user)]


def login_rate_check(*, ip: str, username: str) -> RateDecision:
    """Count a login attempt per address and per username (guessing one password from
    many addresses, or many passwords from one); say if it may be tried. Counted before
    the password is checked, so attempts sent at once cannot slip past the limit. Fails
    open like the rest, logged."""
    counted: list[tuple[str, str, int]] = []
    for scope, subject, limit in _login_limits(ip=ip, username=username):
        decision = rate_limit_hit(scope=scope, subject=subject, limit_per_minute=limit)
        if not decision.allowed:
            _refund(counted)
            return decision
        counted.append((scope, subject, limit))
    return RateDecision(allowed=True)


def login_succeeded(*, ip: str, username: str) -> None:
    """A login that worked gives its attempt back: a shared account signing in often is
    not an attack, and only failed attempts use up the budget."""
    _refund(_login_limits(ip=ip, username=username))


def _refund(limits: list[tuple[str, str, int]]) -> None:
    for scope, subject, limit in limits:
        rate_limit_hit(scope=scope, subject=subject, limit_per_minute=limit, mode="refund")


LOGIN_PATHS = frozenset({"/admin/login/", "/login/", "/dashboard/login/"})


class LoginThrottleMiddleware:
    """429 for login POSTs over LOGIN_ATTEMPTS_PER_MINUTE failed attempts (the three login
    pages). A login that succeeds answers a redirect and gives its attempt back."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if request.method == "POST" and request.path in LOGIN_PATHS:
            who = {"ip": request.META.get("REMOTE_ADDR", ""), "username": str(request.POST.get("username", ""))}
            decision = login_rate_check(**who)
            if not decision.allowed:
                from django.http import HttpResponse

                response = HttpResponse(
                    f"Too many login attempts; try again in {decision.retry_after} s.\n",
                    status=429,
                    content_type="text/plain",
                )
                response["Retry-After"] = str(decision.retry_after)
                return response
            response = self.get_response(request)
            if response.status_code in (301, 302, 303):
                login_succeeded(**who)
            return response
        return self.get_response(request)
