from __future__ import annotations

from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sessions_app"
    verbose_name = "Sessions"

    def ready(self) -> None:
        from agents_app.models import Agent, PromptVersion
        from sessions_app.models import ApiClient
        from voiceplatform.hotcache import connect_invalidation

        connect_invalidation(ApiClient, Agent, PromptVersion)
