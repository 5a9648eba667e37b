"""Property-based fuzzing of the whole /api/v1 OpenAPI schema, in-process: no input may cause a 5xx.

schemathesis generates valid and invalid requests for every operation from the schema
and calls the Django WSGI app directly. Requests carry a valid client key plus a logged-in
browser session with its CSRF token, so the authenticated code paths are exercised, not
only the 401s. Kept small (a few dozen examples per operation) to stay well under a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client, override_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

CSRF = "c" * 32


# Loaded at collection (schemathesis's lazy fixture loader does not support pytest 9).
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())


@pytest.fixture
def keep_test_connection():
    """As Django's test Client does: requests must not close the test's DB connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(keep_test_connection, agent, owner_client, outsider_user) -> dict[str, str]:
    _, key = owner_client
    browser = Client()
    browser.force_login(outsider_user)
    session_cookie = browser.cookies["sessionid"].value
    return {
        "Authorization": f"Bearer {key}",
        "Cookie": f"sessionid={session_cookie}; csrftoken={CSRF}",
        "X-CSRFToken": CSRF,
    }


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_causes_a_server_error(case, auth_headers):
    # A high limit keeps creation on its full code path instead of 429s.
    with override_settings(SESSION_CREATE_RATE_PER_MINUTE=100_000):
        case.call_and_validate(headers=auth_headers, checks=[not_a_server_error])
