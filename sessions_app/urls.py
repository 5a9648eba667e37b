from __future__ import annotations

from django.urls import path

from sessions_app import call_views, views

urlpatterns: list = [
    path("call/", call_views.call_page, name="call"),
    path("dashboard/", views.dashboard_page, name="dashboard"),
    path("dashboard/sessions/<uuid:session_id>/", views.session_page, name="dashboard-session"),
    path("dashboard/api/kpis", views.kpis_json, name="dashboard-kpis"),
    path("dashboard/api/sessions/<uuid:session_id>", views.session_json, name="dashboard-session-json"),
]
