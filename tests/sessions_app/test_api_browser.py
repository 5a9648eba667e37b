"""The same-origin browser endpoints: Django login + CSRF, sessions owned by the user."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client

from sessions_app.models import VoiceSession

pytestmark = pytest.mark.django_db

CSRF = "a" * 16 + "B" * 16  # a 32-character CSRF secret, as Django's cookie holds


def _browser(user: User | None, *, csrf: bool = True) -> Client:
    http = Client(enforce_csrf_checks=True)
    if user is not None:
        http.force_login(user)
    http.cookies["csrftoken"] = CSRF
    if csrf:
        http.defaults["HTTP_X_CSRFTOKEN"] = CSRF
    return http


def _start(http: Client, agent: str = "support"):
    return http.post("/api/v1/browser/sessions", data=json.dumps({"agent": agent}), content_type="application/json")


@pytest.fixture
def caller(db) -> User:
    return User.objects.create_user("caller", "caller@example.com", "caller-pass-123")


def test_a_logged_in_user_starts_a_call_without_an_api_key(agent, caller):
    response = _start(_browser(caller))
    assert response.status_code == 201, response.content
    body = response.json()
    session = VoiceSession.objects.get(pk=body["session_id"])
    assert session.user == caller and session.api_client is None
    assert session.caller_id == f"user-{caller.pk}"
    assert body["url"].startswith("local://")


def test_it_lists_callable_agents(agent, caller):
    response = _browser(caller).get("/api/v1/browser/agents")
    assert response.status_code == 200
    assert response.json() == [{"slug": "support", "name": "Support agent", "description": ""}]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/browser/agents"),
        ("post", "/api/v1/browser/sessions"),
        ("get", "/api/v1/browser/sessions/{id}"),
        ("post", "/api/v1/browser/sessions/{id}/reconnect"),
        ("post", "/api/v1/browser/sessions/{id}/interrupt"),
        ("post", "/api/v1/browser/sessions/{id}/end"),
    ],
)
def test_it_requires_a_login_for_every_browser_endpoint(agent, caller, owner_client, method, path):
    sid = _start(_browser(caller)).json()["session_id"]
    anonymous = _browser(None)
    _, key = owner_client
    for http, headers in ((anonymous, {}), (anonymous, {"HTTP_AUTHORIZATION": f"Bearer {key}"})):
        url = path.format(id=sid)
        response = (
            getattr(http, method)(url, **headers)
            if method == "get"
            else http.post(url, data=json.dumps({"agent": "support"}), content_type="application/json", **headers)
        )
        assert response.status_code == 401, (url, response.content)
        assert response.json()["code"] == "login_required"


@pytest.mark.parametrize("action", ["reconnect", "interrupt", "end"])
def test_it_refuses_posts_without_a_csrf_token(agent, caller, action):
    sid = _start(_browser(caller)).json()["session_id"]
    no_csrf = _browser(caller, csrf=False)
    response = no_csrf.post(f"/api/v1/browser/sessions/{sid}/{action}")
    assert response.status_code == 403 and response.json()["code"] == "csrf_failed"
    assert _start(no_csrf).status_code == 403
    assert VoiceSession.objects.count() == 1


@pytest.mark.parametrize(("action", "ok"), [("reconnect", 200), ("interrupt", 202), ("end", 200)])
def test_the_owner_controls_the_call_and_others_get_404(agent, caller, outsider_user, owner_client, action, ok):
    sid = _start(_browser(caller)).json()["session_id"]
    assert _browser(outsider_user).post(f"/api/v1/browser/sessions/{sid}/{action}").status_code == 404
    assert _browser(outsider_user).get(f"/api/v1/browser/sessions/{sid}").status_code == 404
    # An API client's session is never reachable through the browser endpoints, even by id.
    _, key = owner_client
    api_sid = (
        Client()
        .post(
            "/api/v1/sessions",
            data=json.dumps({"agent": "support", "user_id": "x"}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
        )
        .json()["session_id"]
    )
    assert _browser(caller).post(f"/api/v1/browser/sessions/{api_sid}/{action}").status_code == 404
    response = _browser(caller).post(f"/api/v1/browser/sessions/{sid}/{action}")
    assert response.status_code == ok, response.content
    assert _browser(caller).get(f"/api/v1/browser/sessions/{sid}").json()["session_id"] == sid


def test_a_browser_user_does_not_reach_unknown_ids(caller):
    response = _browser(caller).get(f"/api/v1/browser/sessions/{uuid.uuid4()}")
    assert response.status_code == 404


def test_it_rejects_an_unknown_agent_from_the_browser(agent, caller):
    response = _start(_browser(caller), agent="missing")
    assert response.status_code == 422 and response.json()["code"] == "unknown_agent"


def test_it_does_not_accept_a_caller_id_from_the_browser(agent, caller):
    response = _browser(caller).post(
        "/api/v1/browser/sessions",
        data=json.dumps({"agent": "support", "user_id": "someone-else"}),
        content_type="application/json",
    )
    assert response.status_code == 422
