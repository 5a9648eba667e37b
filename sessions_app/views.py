"""Pages and JSON reads of the live support dashboard (thin: auth, selector, render).

Only staff and the "Support staff" group see them. A logged-out visitor is sent to the
dashboard's login (`/dashboard/login/?next=`, any active user; the admin login would
refuse support members who are not staff); a logged-in user without the right is told so (403), not
bounced back to a login form they already passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any
from uuid import UUID

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from agents_app.models import DEFAULT_BUDGETS_MS, STAGES, Agent
from sessions_app import dashboard_selectors, services
from sessions_app.tokens import client_url
from voiceplatform.api_errors import http_status
from voiceplatform.errors import DomainError

View = Callable[..., HttpResponse]
# Not the admin login: that one takes staff only, and the Support staff group need not be.
LOGIN_URL = "/dashboard/login/"


def support_staff_required(*, api: bool = False) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                if api:
                    return JsonResponse({"error": "login_required", "detail": "Log in as support staff."}, status=401)
                return redirect_to_login(request.get_full_path(), login_url=LOGIN_URL)
            if not dashboard_selectors.support_staff_check(user):
                detail = "Only staff and the Support staff group may watch calls."
                if api:
                    return JsonResponse({"error": "forbidden", "detail": detail}, status=403)
                return render(request, "dashboard/forbidden.html", {"detail": detail}, status=403)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _page_config(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        "wsDashboard": "/ws/dashboard/",
        "kpisUrl": "/dashboard/api/kpis",
        "sessionUrl": "/dashboard/sessions/{id}/",
        "windows": list(dashboard_selectors.KPI_WINDOWS),
        "defaultWindow": dashboard_selectors.DEFAULT_KPI_WINDOW,
        "stages": [{"key": key, "label": label} for key, label in STAGES],
        # Rows and breakdowns colour latencies against each agent's own budget.
        "budgets": {agent.slug: agent.budgets_ms() for agent in Agent.objects.all()},
        "defaultBudgets": DEFAULT_BUDGETS_MS,
        **extra,
    }


@require_GET
@never_cache
@support_staff_required()
def dashboard_page(request: HttpRequest) -> HttpResponse:
    window = request.GET.get("window") or dashboard_selectors.DEFAULT_KPI_WINDOW
    if window not in dashboard_selectors.KPI_WINDOWS:
        window = dashboard_selectors.DEFAULT_KPI_WINDOW
    # Rendered server-side too, so the page is useful before the websocket opens.
    context = {
        "config": _page_config(request, window=window),
        "rows": dashboard_selectors.dashboard_rows(),
        "kpis": dashboard_selectors.dashboard_kpis(window=window),
        "windows": list(dashboard_selectors.KPI_WINDOWS),
        "window": window,
    }
    return render(request, "dashboard/index.html", context)


@require_GET
@never_cache
@support_staff_required()
def session_page(request: HttpRequest, session_id: UUID) -> HttpResponse:
    detail = dashboard_selectors.session_snapshot(session_id=session_id)
    if detail is None:
        raise Http404("No such session.")
    config = _page_config(request, sessionId=str(session_id), wsSession=f"/ws/sessions/{session_id}/")
    can_step_in = {
        "listen": request.user.has_perm("sessions_app.listen_voicesession"),
        "whisper": request.user.has_perm("sessions_app.whisper_voicesession"),
    }
    context = {"config": config, "detail": detail, "session": detail["session"], "can_step_in": can_step_in}
    return render(request, "dashboard/session.html", context)


@require_GET
@never_cache
@support_staff_required(api=True)
def kpis_json(request: HttpRequest) -> JsonResponse:
    window = request.GET.get("window") or dashboard_selectors.DEFAULT_KPI_WINDOW
    try:
        return JsonResponse(dashboard_selectors.dashboard_kpis(window=window))
    except ValueError as exc:
        return JsonResponse({"error": "invalid_window", "detail": str(exc)}, status=400)


@require_GET
@never_cache
@support_staff_required(api=True)
def session_json(request: HttpRequest, session_id: UUID) -> JsonResponse:
    detail = dashboard_selectors.session_snapshot(session_id=session_id)
    if detail is None:
        return JsonResponse({"error": "not_found", "detail": "No such session."}, status=404)
    return JsonResponse(detail)


# --- stepping into a live call (issue 33, docs/supervisor.md) ------------------------------
# POST with the session cookie and the CSRF token; each action its own permission.


def _staff_action(permission: str) -> Callable[[View], View]:
    """Support staff with `permission` (the admin grants it per user or group), else 403;
    a domain refusal (the call has ended…) becomes its status with {"error", "detail"}."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.has_perm(permission):
                return JsonResponse(
                    {"error": "forbidden", "detail": f"You lack the permission {permission!r} for live calls."},
                    status=403,
                )
            try:
                return view(request, *args, **kwargs)
            except DomainError as exc:
                return JsonResponse({"error": exc.code, "detail": exc.message}, status=http_status(exc))

        return support_staff_required(api=True)(wrapper)

    return decorator


def _session_or_404(session_id: UUID) -> None:
    if not dashboard_selectors.session_exists(session_id=session_id):
        raise Http404("No such session.")


@require_POST
@never_cache
@_staff_action("sessions_app.listen_voicesession")
def session_listen(request: HttpRequest, session_id: UUID) -> JsonResponse:
    _session_or_404(session_id)
    token = services.session_listen(session_id=session_id, user=request.user)
    return JsonResponse(
        {"url": client_url(), "token": token.token, "identity": token.identity, "expires_at": token.expires_at}
    )


@require_POST
@never_cache
@_staff_action("sessions_app.whisper_voicesession")
def session_whisper(request: HttpRequest, session_id: UUID) -> JsonResponse:
    _session_or_404(session_id)
    try:
        text = json.loads(request.body or b"{}").get("text", "")
    except (ValueError, AttributeError):
        return JsonResponse({"error": "malformed_json", "detail": 'Send {"text": "…"}.'}, status=400)
    event = services.session_whisper(session_id=session_id, user=request.user, text=str(text))
    return JsonResponse({"event_seq": event.seq, "text": event.payload["text"]}, status=202)
