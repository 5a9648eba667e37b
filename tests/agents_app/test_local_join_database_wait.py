"""A caller who reaches the local agent host during a database restart waits, then joins."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from agents_app.runtime.worker import local_lifecycle


def _joins_after(failures: int, calls: list[str]):
    async def join(room: str, connection: str) -> dict:
        calls.append(room)
        if len(calls) <= failures:
            raise OperationalError("couldn't get a connection after 10.00 sec")
        return {"session_id": "s1", "state": "active"}

    return join


async def test_a_join_during_a_database_outage_is_retried_until_the_database_is_back(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(local_lifecycle, "_caller_joined", _joins_after(2, calls))
    assert await local_lifecycle.caller_joined("vs-room", "c1") == {"session_id": "s1", "state": "active"}
    assert calls == ["vs-room"] * 3


async def test_a_join_is_refused_with_a_reason_when_the_outage_outlasts_the_wait(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(local_lifecycle, "_caller_joined", _joins_after(1000, calls))
    monkeypatch.setattr(local_lifecycle, "JOIN_DATABASE_WAIT_SECONDS", 1.0)
    with pytest.raises(local_lifecycle.HelloRejected) as refused:
        await local_lifecycle.caller_joined("vs-room", "c1")
    assert refused.value.code == "database_unavailable"
    assert 2 <= len(calls) <= 3  # after 0.5 s, then the next wait (1 s) would pass the deadline
