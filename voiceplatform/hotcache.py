"""Per-process caches of the session-creation hot path: API keys and published prompts.

Every `POST /api/v1/sessions` would otherwise look up its API key and its agent's
published prompt version in the database. Both change rarely, so each server process
keeps what it read for `HOT_CACHE_SECONDS` (default 2 s; 0 turns the cache off) in
Django's local-memory cache (`CACHES["hot"]`).

What a change costs: the process that saves an `ApiClient`, `Agent` or `PromptVersion`
forgets everything at once (and again after the commit); other processes see the change
within `HOT_CACHE_SECONDS`. So a deactivated key may open sessions for up to that long
in another web process, and a session created in another process in the same seconds
as a publish may still pin the previous version (the pinned version is always recorded
on the session). See docs/api.md.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models.signals import post_delete, post_save

ALIAS = "hot"
_MISSING = object()


def hot_get(key: str) -> Any:
    """The cached value, or None (also when the cache is off)."""
    if settings.HOT_CACHE_SECONDS <= 0:
        return None
    return caches[ALIAS].get(key)


def hot_set(key: str, value: Any) -> None:
    if settings.HOT_CACHE_SECONDS > 0:
        caches[ALIAS].set(key, value, settings.HOT_CACHE_SECONDS)


def hot_clear(**_: Any) -> None:
    """Forget everything now and once more after the surrounding commit.

    Now, so this thread never reads its own stale entry; after the commit, because a
    request in between may have cached the state from before the change.
    """
    caches[ALIAS].clear()
    transaction.on_commit(caches[ALIAS].clear)


def connect_invalidation(*models: type) -> None:
    for model in models:
        post_save.connect(hot_clear, sender=model, dispatch_uid=f"hotcache-save-{model._meta.label}")
        post_delete.connect(hot_clear, sender=model, dispatch_uid=f"hotcache-delete-{model._meta.label}")
