"""GET /healthz: whether the database and Redis answer."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def _check_db() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not healthy"
        return f"{type(exc).__name__}: {exc}"
    return None


_redis_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client per process (and URL): a new connection costs ~3 ms of CPU with redis-py 8.

    Its pool reconnects by itself after Redis comes back; creating it does not connect.
    """
    url = settings.REDIS_URL
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    return client


def redis_problem() -> str | None:
    try:
        _redis().ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Public (load balancers call it without a login), so it names what failed but never
    the driver's error text, which can carry host names, users or paths: that goes to the log."""
    db_error, redis_error = _check_db(), redis_problem()
    for part, error in (("database", db_error), ("redis", redis_error)):
        if error:
            logger.warning("healthz: %s unavailable: %s", part, error)
    body = {
        "status": "ok" if not (db_error or redis_error) else "unavailable",
        "database": {"ok": db_error is None, "engine": connection.vendor},
        "redis": {"ok": redis_error is None, "embedded": settings.EMBEDDED_REDIS},
    }
    return JsonResponse(body, status=200 if body["status"] == "ok" else 503)
