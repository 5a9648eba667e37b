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


def test_a_database_error_has_the_pool_drop_its_broken_connections():
    """After a restart, one request per web process fails, not one per pooled connection."""
    from voiceplatform.api_errors import discard_broken_pooled_connections

    class Pool:
        checks = 0

        def check(self):
            Pool.checks += 1

    class Connection:
        pool = Pool()

    discard_broken_pooled_connections(Connection())
    assert Pool.checks == 1

    class Unpooled:  # SQLite, or DB_POOL=false
        pass

    discard_broken_pooled_connections(Unpooled())  # nothing to check, no error


@pytest.mark.django_db
def test_the_503_paths_check_the_pool(client, monkeypatch):
    import django.db
    from django.contrib.auth import forms

    from voiceplatform import api_errors

    checked = []
    monkeypatch.setattr(api_errors, "discard_broken_pooled_connections", lambda: checked.append(True))

    def down(*args, **kwargs):
        raise django.db.OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(forms, "authenticate", down)
    assert client.post("/admin/login/", {"username": "staff", "password": "x"}).status_code == 503
    assert checked == [True]
