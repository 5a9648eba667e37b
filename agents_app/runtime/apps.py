from __future__ import annotations

from django.apps import AppConfig


class AgentsRuntimeConfig(AppConfig):
    name = "agents_app.runtime"
    label = "agents_runtime"
    verbose_name = "Agents runtime"
