"""Shared fixtures: personas (owner, staff, outsider), agents with prompts, API clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.contrib.auth.models import Group, User

from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
from sessions_app.models import ApiScope
from sessions_app.services import api_client_create

# Processes the tests start (the demo, web servers, workers) run with development
# defaults, as `make demo` runs them; this pytest process has them already (TESTING).
os.environ.setdefault("VOICE_DEV_DEFAULTS", "true")

# The livekit tier runs only inside its network namespace (`make test-livekit`, which
# `make test` runs): tests/livekit/run_tier.py sets VOICE_LIVEKIT_TIER there.
collect_ignore_glob = [] if os.environ.get("VOICE_LIVEKIT_TIER") == "1" else ["livekit/*"]


@pytest.fixture(autouse=True)
def _fresh_hot_cache():
    """Each test starts with an empty per-process cache of keys and prompts (hotcache.py):
    rows of an earlier test's rolled-back transaction must not be served from it."""
    from voiceplatform.hotcache import hot_forget

    hot_forget()
    yield


@pytest.fixture(autouse=True)
def live_messages(monkeypatch):
    """Every channel-layer message and dashboard websocket frame of a test fits its schema
    (sessions_app/live/schemas.py), checked by its `type` as it is sent (tests/live_schema.py)."""
    from tests.live_schema import LiveMessageCheck

    checker = LiveMessageCheck()
    checker.install(monkeypatch)
    yield checker
    checker.verify()


@contextmanager
def _celery_eager(*, propagates: bool) -> Iterator[None]:
    from voiceplatform.celery import app

    previous = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, propagates
    try:
        yield
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Celery tasks run in-process, at once; a task's exception propagates to the caller."""
    with _celery_eager(propagates=True):
        yield


@pytest.fixture
def eager_celery_with_retries() -> Iterator[None]:
    """Celery tasks run in-process; a task's `retry` is re-applied at once (eager retries
    happen only when exceptions do not propagate); failures surface through
    `EagerResult.get()`."""
    with _celery_eager(propagates=False):
        yield


@pytest.fixture
def staff_user(db) -> User:
    """A support person: staff, in the "Support staff" group."""
    user = User.objects.create_user("staff", "staff@example.com", "staff-pass-123", is_staff=True)
    group, _ = Group.objects.get_or_create(name="Support staff")
    user.groups.add(group)
    return user


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("admin", "admin@example.com", "admin-pass-123")


@pytest.fixture
def editor(db):
    """A logged-in test client of a prompt editor: staff, in the "Prompt editors" group."""
    from django.test import Client

    user = User.objects.create_user("mallory", "m@example.com", "pw-123456", is_staff=True)
    user.groups.add(Group.objects.get(name="Prompt editors"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def outsider_user(db) -> User:
    """Logged in, but neither staff nor support."""
    return User.objects.create_user("outsider", "outsider@example.com", "outsider-pass-123")


@pytest.fixture
def agent(db) -> Agent:
    agent = Agent.objects.create(slug="support", name="Support agent")
    version = prompt_draft_create(
        agent=agent,
        instructions="You are the support agent of {{company}}. Be brief.",
        greeting="Hello, this is {{company}} support. How can I help?",
        variables={"company": "Acme"},
        change_note="first",
    )
    prompt_publish(version=version)
    return agent


@pytest.fixture
def owner_client(db) -> tuple:
    """An API client (client scope) and its key: the owner of the sessions it creates."""
    return api_client_create(name="owner-app", scope=ApiScope.CLIENT)


@pytest.fixture
def other_client(db) -> tuple:
    """Another API client: an outsider to the owner's sessions."""
    return api_client_create(name="other-app", scope=ApiScope.CLIENT)


@pytest.fixture
def agent_scope_client(db) -> tuple:
    return api_client_create(name="external-agent", scope=ApiScope.AGENT)
