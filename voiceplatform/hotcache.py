"""Per-process caches of the session-creation hot path: API keys and published prompts.

Every `POST /api/v1/sessions` would otherwise look up its API key and its agent's
published prompt version in the database. Both change rarely, so each server process
keeps what it read for `HOT_CACHE_SECONDS` (default 2 s; 0 turns the cache off) in a
plain dict. Not Django's local-memory cache: it pickles every value in and out, which cost
more CPU than the SELECT it saves. So every thread of a process shares the cached model
instances: treat them as read-only (the one write, `last_used_at` bookkeeping, sets one
attribute to a newer value).

What a change costs: the process that saves an `ApiClient`, `Agent` or `PromptVersion`
forgets everything at once (and again after the commit); other processes see the change
within `HOT_CACHE_SECONDS`. So a deactivated key may open sessions for up to that long
in another web process, and a session created in another process in the same seconds
as a publish may still pin the previous version (the pinned version is always recorded
on the session). See docs/api.md.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

# Beyond this many keys (API keys and agent slugs in use within HOT_CACHE_SECONDS) the
# cache starts over rather than grow.
MAX_ENTRIES = 5000

_entries: dict[str, tuple[float, Any]] = {}  # key -> (monotonic expiry, value); GIL-atomic ops only


def hot_get(key: str) -> Any:
    """The cached value, or None (also when the cache is off or the entry has expired)."""
    entry = _entries.get(key)
    if entry is None or entry[0] <= time.monotonic() or settings.HOT_CACHE_SECONDS <= 0:
        return None
    return entry[1]


def hot_set(key: str, value: Any) -> None:
    seconds = settings.HOT_CACHE_SECONDS
    if seconds > 0:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[key] = (time.monotonic() + seconds, value)


def hot_forget() -> None:
    """Forget every entry of this process (tests; hot_clear on a change)."""
    _entries.clear()


def hot_clear(**_: Any) -> None:
    """Forget everything now and once more after the surrounding commit.

    Now, so this thread never reads its own stale entry; after the commit, because a
    request in between may have cached the state from before the change.
    """
    hot_forget()
    transaction.on_commit(hot_forget)


def connect_invalidation(*models: type) -> None:
    for model in models:
        post_save.connect(hot_clear, sender=model, dispatch_uid=f"hotcache-save-{model._meta.label}")
        post_delete.connect(hot_clear, sender=model, dispatch_uid=f"hotcache-delete-{model._meta.label}")
