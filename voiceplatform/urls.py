from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from voiceplatform.api import api
from voiceplatform.health import healthz

admin.site.site_header = "Voice platform"
admin.site.site_title = "Voice platform admin"
admin.site.index_title = "Agents, prompts, tools and calls"

urlpatterns = [
    path("", RedirectView.as_view(url="/dashboard/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("django_prometheus.urls")),
    path("", include("sessions_app.urls")),
]
