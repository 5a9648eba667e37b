"""Websocket routes (wrapped by voiceplatform/asgi.py in origin and auth middleware)."""

from __future__ import annotations

from django.urls import path

from sessions_app.live import consumers

websocket_urlpatterns: list = [
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
    path("ws/sessions/<uuid:session_id>/", consumers.SessionConsumer.as_asgi()),
]
