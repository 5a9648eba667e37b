from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_a_caller_who_is_not_staff_can_sign_in_and_open_the_call_page(client, outsider_user, agent):
    page = client.get("/login/?next=/call/")
    assert page.status_code == 200
    assert b"Sign in to make a call" in page.content
    response = client.post("/login/", {"username": "outsider", "password": "outsider-pass-123", "next": "/call/"})
    assert response.status_code == 302 and response["Location"] == "/call/"
    assert client.get("/call/").status_code == 200


def test_the_caller_login_refuses_a_wrong_password(client, outsider_user):
    response = client.post("/login/", {"username": "outsider", "password": "nope", "next": "/call/"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get("/call/").status_code == 302
