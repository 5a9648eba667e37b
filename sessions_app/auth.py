"""django-ninja auth classes: API keys for apps, the Django login for the browser call page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from sessions_app.models import ApiClient, ApiScope
from sessions_app.services import api_client_authenticate
from voiceplatform.api_errors import ApiError


class ApiKeyAuth(HttpBearer):
    """`Authorization: Bearer <key>` from `create_api_client`, limited to some scopes.

    An unknown key is a 401; a valid key of the wrong scope is a 403, so an agent-scope
    key (meant for tool invocations) can never open or read voice sessions.
    """

    def __init__(self, scopes: tuple[str, ...] = (ApiScope.CLIENT,)) -> None:
        super().__init__()
        self.scopes = tuple(str(s) for s in scopes)

    def authenticate(self, request: HttpRequest, token: str) -> ApiClient | None:
        client = api_client_authenticate(key=token.strip())
        if client is None:
            return None
        if client.scope not in self.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"This API key has scope {client.scope!r}; this operation needs {' or '.join(self.scopes)}.",
            )
        return client


class BrowserSessionAuth(APIKeyCookie):
    """The logged-in Django user plus a CSRF token: no API key ever reaches a browser."""

    param_name: str = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        super().__init__(csrf=False)  # checked below, with our own error shape

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_active:
            # 401 before CSRF: a logged-out page should learn that it must log in.
            raise ApiError(401, "login_required", "Log in to start or control a call from the browser.")
        if check_csrf(request) is not None:
            raise ApiError(403, "csrf_failed", "CSRF verification failed. Send the X-CSRFToken header.")
        return user


client_key_auth = ApiKeyAuth(scopes=(ApiScope.CLIENT,))
browser_auth = BrowserSessionAuth()
