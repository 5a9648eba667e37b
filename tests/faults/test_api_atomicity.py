"""No API request half-applied: the database fails inside session creation's write.

The failure is the database's own (a trigger refusing the session's first event, after
the session row was written in the same statement on PostgreSQL, or in the same
transaction elsewhere): no hook in the platform. The request fails, and neither the
session nor any of its events stays behind. Its sibling with a killed web process is
tests/faults/test_web_process_killed.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client

from sessions_app.models import ApiScope, SessionEvent, VoiceSession
from sessions_app.services import api_client_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]

DOOMED_CALLER = "doomed-caller"

_POSTGRES_TRIGGER = f"""
CREATE OR REPLACE FUNCTION fault_refuse_first_event() RETURNS trigger AS $$
BEGIN
  IF NEW.type = 'session.created' AND NEW.payload->>'caller_id' = '{DOOMED_CALLER}' THEN
    RAISE EXCEPTION 'injected failure: the first event cannot be written';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER fault_refuse_first_event BEFORE INSERT ON sessions_app_sessionevent
  FOR EACH ROW EXECUTE FUNCTION fault_refuse_first_event();
"""
_SQLITE_TRIGGER = f"""
CREATE TRIGGER fault_refuse_first_event BEFORE INSERT ON sessions_app_sessionevent
WHEN NEW.type = 'session.created' AND json_extract(NEW.payload, '$.caller_id') = '{DOOMED_CALLER}'
BEGIN SELECT RAISE(ABORT, 'injected failure: the first event cannot be written'); END;
"""


@pytest.fixture
def refused_first_event() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRES_TRIGGER if connection.vendor == "postgresql" else _SQLITE_TRIGGER)
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER IF EXISTS fault_refuse_first_event ON sessions_app_sessionevent")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS fault_refuse_first_event")


def _create(key: str, caller: str):  # type: ignore[no-untyped-def]
    return Client(raise_request_exception=False).post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": caller}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_a_database_failure_inside_session_creation_leaves_no_session_and_no_event(agent, refused_first_event):
    _client, key = api_client_create(name="atomic", scope=ApiScope.CLIENT)
    sessions_before, events_before = VoiceSession.objects.count(), SessionEvent.objects.count()

    response = _create(key, DOOMED_CALLER)

    assert response.status_code >= 500
    assert not VoiceSession.objects.filter(caller_id=DOOMED_CALLER).exists()  # the row written first is gone too
    assert (VoiceSession.objects.count(), SessionEvent.objects.count()) == (sessions_before, events_before)

    # The same request for another caller goes through whole: the trigger is what failed.
    ok = _create(key, "lucky-caller")
    assert ok.status_code == 201, ok.content
    session = VoiceSession.objects.get(caller_id="lucky-caller")
    assert list(session.events.order_by("seq").values_list("seq", flat=True)) == list(range(1, session.last_seq + 1))
