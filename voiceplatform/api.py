"""The NinjaAPI mounted at /api/v1 (OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs).

The docs page loads Swagger UI from django-ninja's own static files (`ninja` is an
installed app), never from a CDN, and has no validator badge (swagger.io's validator
would get an image request carrying the spec's URL): it renders with no internet access.
"""

from __future__ import annotations

from ninja import NinjaAPI, Swagger

from sessions_app.api import router as sessions_router
from tools_app.api import router as tools_router
from voiceplatform.access import docs_access
from voiceplatform.api_errors import install_error_handlers

api = NinjaAPI(
    title="Voice platform API",
    version="1.0.0",
    description="Open voice sessions, get short-lived LiveKit tokens, and invoke tools idempotently.",
    urls_namespace="api-v1",
    docs=Swagger(settings={"validatorUrl": None}),
    docs_decorator=docs_access,
)
install_error_handlers(api)
api.add_router("/", sessions_router)
api.add_router("/tools", tools_router)
