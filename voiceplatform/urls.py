from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from voiceplatform.access import metrics_view
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
    # The login for callers (any active user; /call/ needs it). Support staff use /dashboard/login/.
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="registration/login.html", extra_context={"for_calls": True}),
        name="login",
    ),
    path("metrics", metrics_view, name="prometheus-django-metrics"),
    path("", include("sessions_app.urls")),
]
