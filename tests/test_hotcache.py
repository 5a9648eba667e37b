"""voiceplatform.hotcache: the per-process cache of API keys and published prompts."""

from __future__ import annotations

import pytest

from voiceplatform import hotcache


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(hotcache.time, "monotonic", lambda: now[0])
    return now


def test_an_entry_lives_for_hot_cache_seconds(settings, clock):
    settings.HOT_CACHE_SECONDS = 2
    value = object()
    hotcache.hot_set("k", value)
    assert hotcache.hot_get("k") is value  # the same object: no pickling
    clock[0] += 1.9
    assert hotcache.hot_get("k") is value
    clock[0] += 0.2
    assert hotcache.hot_get("k") is None


def test_zero_seconds_turns_the_cache_off(settings, clock):
    settings.HOT_CACHE_SECONDS = 2
    hotcache.hot_set("k", "v")
    settings.HOT_CACHE_SECONDS = 0
    assert hotcache.hot_get("k") is None
    hotcache.hot_set("other", "v")
    settings.HOT_CACHE_SECONDS = 2
    assert hotcache.hot_get("other") is None


def test_it_starts_over_rather_than_grow_past_max_entries(settings, clock, monkeypatch):
    settings.HOT_CACHE_SECONDS = 2
    monkeypatch.setattr(hotcache, "MAX_ENTRIES", 3)
    for key in "abc":
        hotcache.hot_set(key, key)
    hotcache.hot_set("d", "d")
    assert [hotcache.hot_get(k) for k in "abcd"] == [None, None, None, "d"]


@pytest.mark.django_db
def test_saving_an_api_client_forgets_every_entry(settings):
    from sessions_app.services import api_client_create

    settings.HOT_CACHE_SECONDS = 2
    hotcache.hot_set("published:support", "v1")
    api_client_create(name="another")  # post_save of ApiClient
    assert hotcache.hot_get("published:support") is None
