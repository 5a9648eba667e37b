"""Who may read /metrics and the API docs (issue 17, item 12).

- `/metrics`: Prometheus scrapes it. Allowed from loopback, from METRICS_ALLOWED_NETWORKS,
  or with `Authorization: Bearer <METRICS_TOKEN>`; when METRICS_TOKEN is set, the token is
  required from everyone (behind a reverse proxy every client looks like loopback).
- The API docs (`/api/v1/docs`, `/api/v1/openapi.json`): staff, or everyone when
  API_DOCS_PUBLIC is on (the default with development defaults only).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden

from voiceplatform.envconfig import parsed_networks


def _client_allowed(request: HttpRequest) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if address.is_loopback:
        return True
    return any(address in network for network in parsed_networks(getattr(settings, "METRICS_ALLOWED_NETWORKS", [])))


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _client_allowed(request):
        return HttpResponseForbidden(
            "metrics: loopback, METRICS_ALLOWED_NETWORKS or the METRICS_TOKEN bearer token only\n"
        )
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from voiceplatform.metrics_server import metrics_registry

    # All gunicorn workers' samples (multiprocess files), not the one that took the scrape.
    return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)


def docs_access(view: Callable[..., Any]) -> Callable[..., Any]:
    """django-ninja `docs_decorator`: staff only unless API_DOCS_PUBLIC."""
    staff_view = staff_member_required(view)

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if getattr(settings, "API_DOCS_PUBLIC", False):
            return view(request, *args, **kwargs)
        return staff_view(request, *args, **kwargs)

    return wrapped
