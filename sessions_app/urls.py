from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from sessions_app import call_views, views

urlpatterns: list = [
    path("call/", call_views.call_page, name="call"),
    path("dashboard/", views.dashboard_page, name="dashboard"),
    # Open to every active user (the admin login takes staff only); the pages then check.
    path(
        "dashboard/login/",
        # Without a ?next=, staff land on the dashboard (not LOGIN_REDIRECT_URL, the call page).
        auth_views.LoginView.as_view(
            template_name="registration/login.html", redirect_authenticated_user=False, next_page="dashboard"
        ),
        name="dashboard-login",
    ),
    path("dashboard/sessions/<uuid:session_id>/", views.session_page, name="dashboard-session"),
    path("dashboard/api/kpis", views.kpis_json, name="dashboard-kpis"),
    path("dashboard/api/sessions/<uuid:session_id>", views.session_json, name="dashboard-session-json"),
    path("dashboard/api/sessions/<uuid:session_id>/listen", views.session_listen, name="dashboard-session-listen"),
    path("dashboard/api/sessions/<uuid:session_id>/whisper", views.session_whisper, name="dashboard-session-whisper"),
]
