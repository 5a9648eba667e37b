"""Issue 17, item 10: every client action is bounded, and logins are throttled.

The attacks: a client floods reconnect (a token each time), interrupt, end or tool invoke;
holds thousands of live sessions (each a room and an agent job); guesses a staff
password. Limits are per API client (or browser user) and per minute (Redis), the
live-session cap comes from the database (it holds while Redis is away).
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def _h(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def _create(http: Client, key: str) -> dict:
    response = http.post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u1"}),
        content_type="application/json",
        **_h(key),
    )
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.parametrize(
    ("action", "setting"),
    [("reconnect", "SESSION_RECONNECT_RATE_PER_MINUTE"), ("interrupt", "SESSION_INTERRUPT_RATE_PER_MINUTE")],
)
def test_session_actions_are_limited_per_client(agent, owner_client, other_client, action, setting) -> None:
    http = Client()
    _, key = owner_client
    sid = _create(http, key)["session_id"]
    with override_settings(**{setting: 2}):
        codes = [http.post(f"/api/v1/sessions/{sid}/{action}", **_h(key)).status_code for _ in range(3)]
        assert codes[:2] != [429, 429] and codes[2] == 429
        limited = http.post(f"/api/v1/sessions/{sid}/{action}", **_h(key))
        assert limited.json()["code"] == "rate_limited" and int(limited["Retry-After"]) >= 1
        # Another client has its own budget.
        _, other_key = other_client
        other = _create(http, other_key)["session_id"]
        assert http.post(f"/api/v1/sessions/{other}/{action}", **_h(other_key)).status_code != 429


@override_settings(SESSION_END_RATE_PER_MINUTE=1)
def test_ending_sessions_is_limited(agent, owner_client) -> None:
    http = Client()
    _, key = owner_client
    first, second = _create(http, key)["session_id"], _create(http, key)["session_id"]
    assert http.post(f"/api/v1/sessions/{first}/end", **_h(key)).status_code == 200
    assert http.post(f"/api/v1/sessions/{second}/end", **_h(key)).status_code == 429


@override_settings(MAX_LIVE_SESSIONS_PER_OWNER=2, SESSION_CREATE_RATE_PER_MINUTE=1000)
def test_a_client_cannot_hold_more_live_sessions_than_the_cap(agent, owner_client) -> None:
    http = Client()
    _, key = owner_client
    first = _create(http, key)["session_id"]
    _create(http, key)
    over = http.post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u"}),
        content_type="application/json",
        **_h(key),
    )
    assert over.status_code == 429 and over.json()["code"] == "too_many_live_sessions"
    http.post(f"/api/v1/sessions/{first}/end", **_h(key))
    assert _create(http, key)["session_id"], "ending one frees a place"


@override_settings(LOGIN_ATTEMPTS_PER_MINUTE=3)
@pytest.mark.parametrize("path", ["/admin/login/", "/login/", "/dashboard/login/"])
def test_password_guessing_is_throttled(path) -> None:
    name = f"staff-{uuid.uuid4().hex[:6]}"
    User.objects.create_user(name, password="the-right-password-123", is_staff=True)
    http = Client(REMOTE_ADDR=f"198.51.100.{uuid.uuid4().int % 250 + 1}")  # this test's own address
    codes = [http.post(path, {"username": name, "password": f"guess-{n}"}).status_code for n in range(4)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    # Even the right password waits: the limiter cannot tell a lucky guess from the owner.
    assert http.post(path, {"username": name, "password": "the-right-password-123"}).status_code == 429
    # From many addresses, one username still gets only its budget.
    other = Client(REMOTE_ADDR="203.0.113.9")
    assert other.post(path, {"username": name, "password": "guess-x"}).status_code == 429


@override_settings(LOGIN_ATTEMPTS_PER_MINUTE=3)
def test_successful_logins_do_not_use_up_the_budget() -> None:
    """A shared account (the demo's, a team's) signing in often is not an attack: only
    failed attempts count. The browser tests log in many times a minute."""
    name = f"staff-{uuid.uuid4().hex[:6]}"
    User.objects.create_user(name, password="the-right-password-123", is_staff=True)
    http = Client(REMOTE_ADDR="198.51.100.251")
    codes = [
        http.post("/login/", {"username": name, "password": "the-right-password-123"}).status_code for _ in range(6)
    ]
    assert codes == [302] * 6
    guesses = [http.post("/login/", {"username": name, "password": f"guess-{n}"}).status_code for n in range(4)]
    assert guesses == [200, 200, 200, 429]
