"""Each session's event log is gapless and ordered, whoever appends and from where."""

from __future__ import annotations

import pytest

from sessions_app.models import SessionEvent
from sessions_app.services import session_event_append
from tests.factories import make_voice_session
from tests.threads import run_at_once

pytestmark = pytest.mark.django_db(transaction=True)


def test_appends_from_many_threads_outside_any_transaction_get_distinct_gapless_numbers(agent):
    """Callers such as webhooks and reports append with no transaction of their own: the
    append's own transaction keeps the number and the row together (without it, the
    UPDATE of last_seq and the read of it interleave and two appends read one number)."""
    session = make_voice_session(agent, caller_id="c1")

    def append(worker: int) -> None:
        for index in range(25):
            session_event_append(session_id=session.pk, type="test.append", payload={"w": worker, "i": index})

    run_at_once(append, 8)
    seqs = sorted(SessionEvent.objects.filter(session=session).values_list("seq", flat=True))
    assert seqs == list(range(1, 201))
    session.refresh_from_db()
    assert session.last_seq == 200
