"""Each session's event log is gapless and ordered, whoever appends and from where."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from sessions_app.models import SessionEvent
from sessions_app.services import session_event_append
from tests.factories import make_voice_session

pytestmark = pytest.mark.django_db(transaction=True)


def test_appends_from_many_threads_outside_any_transaction_get_distinct_gapless_numbers(agent):
    """Callers such as webhooks and reports append with no transaction of their own: the
    append's own transaction keeps the number and the row together (without it, the
    UPDATE of last_seq and the read of it interleave and two appends read one number)."""
    session = make_voice_session(agent, caller_id="c1")
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            start.wait()
            for index in range(25):
                session_event_append(session_id=session.pk, type="test.append", payload={"w": worker, "i": index})
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=append, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    seqs = sorted(SessionEvent.objects.filter(session=session).values_list("seq", flat=True))
    assert seqs == list(range(1, 201))
    session.refresh_from_db()
    assert session.last_seq == 200
