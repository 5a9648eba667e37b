"""Pages outside the API answer 503 with Retry-After, not 500, while the database is down
(voiceplatform.api_errors.DatabaseUnavailableMiddleware; the API has its own handler)."""

from __future__ import annotations

import pytest


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
def test_a_login_while_the_database_is_down_answers_503_with_retry_after(client, monkeypatch, error):
    import django.db
    from django.contrib.auth import forms

    def down(*args, **kwargs):
        raise getattr(django.db, error)("terminating connection due to administrator command")

    monkeypatch.setattr(forms, "authenticate", down)
    response = client.post("/admin/login/", {"username": "staff", "password": "x"})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"database is unavailable" in response.content


@pytest.mark.django_db
def test_other_errors_are_not_turned_into_503(client, monkeypatch):
    from django.contrib.auth import forms

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(forms, "authenticate", broken)
    client.raise_request_exception = False
    response = client.post("/admin/login/", {"username": "staff", "password": "x"})
    assert response.status_code == 500
