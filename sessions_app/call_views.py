"""The browser call page (/call/): pick an agent, talk to it over LiveKit.

The page does very little itself: it asks the same-origin browser API (Django session +
CSRF, so no API key ever reaches the browser) for a session and a short-lived token, and
hands both to the vendored livekit-client. Everything the page needs to know is passed in
one JSON blob (`json_script`), so the script carries no server-side templating.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from sessions_app.selectors import agents_callable


def _api_base() -> str:
    try:
        return reverse("api-v1:api-root")
    except NoReverseMatch:  # the API not mounted (never in this project, but keep the page alive)
        return "/api/v1/"


def _dashboard_url() -> str:
    try:
        return reverse("dashboard")
    except NoReverseMatch:
        return "/dashboard/"


def call_config(request: HttpRequest) -> dict[str, Any]:
    """What the page's script needs: where to connect, which endpoints, which limits."""
    base = _api_base() + "browser/"
    livekit_url = settings.LIVEKIT_URL or ""
    return {
        "livekitUrl": livekit_url,
        "localMode": not livekit_url,
        "endpoints": {
            "agents": base + "agents",
            "sessions": base + "sessions",
            # "{id}" is replaced by the session id in the script.
            "reconnect": base + "sessions/{id}/reconnect",
            "interrupt": base + "sessions/{id}/interrupt",
            "end": base + "sessions/{id}/end",
            "session": base + "sessions/{id}",
            # What the caller heard of a turn, measured in the page (docs/latency.md).
            "heard": base + "sessions/{id}/turns/{index}/heard",
        },
        # The server's clock as it made the page (ms since the epoch): the page places the
        # turns' start times (server clock) on its own clock to pair them with what it heard.
        "serverTimeMs": round(time.time() * 1000),
        "dashboardUrl": _dashboard_url(),
        # A LiveKit agent usually joins within a second or two of dispatch; the default 15 s
        # covers a cold worker without leaving the caller in a silent call.
        "agentJoinTimeoutSeconds": getattr(settings, "CALL_AGENT_JOIN_TIMEOUT_SECONDS", 15),
        "user": request.user.get_username(),
        # The browser API is session-authenticated, so every POST carries this header.
        "csrfToken": get_token(request),
    }


@require_GET
@login_required
def call_page(request: HttpRequest) -> HttpResponse:
    config = call_config(request)
    agents = list(agents_callable().only("slug", "name", "description"))
    context = {
        "config": config,
        "agents": agents,
        "local_mode": config["localMode"],
        "livekit_url": config["livekitUrl"],
        "dashboard_url": config["dashboardUrl"],
    }
    return render(request, "call/call.html", context)
