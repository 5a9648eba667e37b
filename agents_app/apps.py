from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AgentsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "agents_app"
    verbose_name = "Agents"

    def ready(self) -> None:
        from agents_app.signals import on_post_migrate

        post_migrate.connect(on_post_migrate, dispatch_uid="agents_app.groups")
