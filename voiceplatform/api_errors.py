"""One JSON error shape for the whole API: {"code", "message", "details"}.

Services raise domain errors (voiceplatform/errors.py); this is where they become HTTP.
`ApiError` is for the API's own operations, which speak HTTP already.
"""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from voiceplatform import errors

DATABASE_RETRY_AFTER_SECONDS = 5

# Each domain error's HTTP status (the first class of its MRO found here).
DOMAIN_STATUS: dict[type[errors.DomainError], int] = {
    errors.Malformed: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InvalidInput: 422,
    errors.LimitReached: 429,
    errors.Unavailable: 502,
}


def http_status(exc: errors.DomainError) -> int:
    """The status the API answers a domain error with."""
    return next((DOMAIN_STATUS[k] for k in type(exc).__mro__ if k in DOMAIN_STATUS), 400)


class ApiError(Exception):
    """Raised by API operations for a 4xx the client should see (services raise domain errors)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details if details is not None else {}}


def install_error_handlers(api: NinjaAPI) -> None:
    def respond(
        request: HttpRequest, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> HttpResponse:
        response = api.create_response(request, body, status=status)
        for name, value in (headers or {}).items():
            response[name] = value
        return response

    @api.exception_handler(ApiError)
    def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return respond(request, exc.status, error_body(exc.code, exc.message, exc.details))

    @api.exception_handler(errors.DomainError)
    def on_domain_error(request: HttpRequest, exc: errors.DomainError) -> HttpResponse:
        status = http_status(exc)
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return respond(request, status, error_body(exc.code, exc.message, exc.details), headers)

    @api.exception_handler(OperationalError)
    @api.exception_handler(InterfaceError)
    def on_database_down(request: HttpRequest, exc: Exception) -> HttpResponse:
        # The database is unreachable or restarting (docs/api.md): a retryable 503, never a
        # 500. Nothing was half-applied: every write service runs in one transaction.
        discard_broken_pooled_connections()
        return respond(
            request,
            503,
            error_body("database_unavailable", "The database is unavailable; retry shortly."),
            {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    @api.exception_handler(ValidationError)
    def on_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        details = [{"loc": [str(p) for p in err.get("loc", [])], "msg": str(err.get("msg", ""))} for err in exc.errors]
        return respond(request, 422, error_body("invalid_request", "The request is not valid.", details))

    @api.exception_handler(AuthenticationError)
    def on_auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return respond(
            request,
            401,
            error_body("unauthorized", "A valid API key is required (Authorization: Bearer <key>)."),
            {"WWW-Authenticate": "Bearer"},
        )

    @api.exception_handler(Http404)
    def on_404(request: HttpRequest, exc: Http404) -> HttpResponse:
        return respond(request, 404, error_body("not_found", str(exc) or "Not found."))

    @api.exception_handler(HttpError)
    def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # django-ninja raises HttpError(400) from the JSON decoder's error (a ValueError;
            # UnicodeDecodeError is one too) when the body cannot be parsed.
            return respond(
                request,
                400,
                error_body(
                    "malformed_json",
                    "The request body is not valid JSON (UTF-8).",
                    {"error": str(exc.__cause__)[:200]},
                ),
            )
        return respond(request, exc.status_code, error_body("http_error", str(exc)))


class DatabaseUnavailableMiddleware:
    """Pages and forms outside the API (the admin, the dashboard, the call page): a view that
    hits an unreachable or restarting database answers 503 with Retry-After, as the API
    does, instead of a 500. In a web process the first use of a pooled connection that a
    PostgreSQL restart broke fails this way once; the pool then discards it (docs/reliability.md)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        import logging

        logging.getLogger(__name__).warning("database unavailable: %s", exception)
        discard_broken_pooled_connections()
        response = HttpResponse(
            "The database is unavailable; retry shortly.\n", status=503, content_type="text/plain; charset=utf-8"
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response


def discard_broken_pooled_connections(connection: Any = None) -> None:
    """After a database error, check every idle connection of this process's pool and drop
    the broken ones (psycopg_pool's `check()`): after a PostgreSQL restart one request per
    web process fails with the 503, not one per pooled connection, whenever each is next
    used. Web processes check no connection per use (DB_HEALTH_CHECKS, docs/configuration.md)."""
    if connection is None:
        from django.db import connection
    pool = getattr(connection, "pool", None)
    if pool is None:
        return
    try:
        pool.check()
    except Exception:  # the database may still be down: the pool refills by itself later
        import logging

        logging.getLogger(__name__).debug("pool check failed", exc_info=True)
