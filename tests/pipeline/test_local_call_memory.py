"""A finished local call leaves nothing of itself behind: after the next call, its JobRuntime,
Recorder, AgentSession and LocalCall are gone (weak references; no memory figures here,
those are bench/soak.py's)."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from tests.pipeline.conftest import CallDriver, db, make_session

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


async def _greeting_call(agent) -> list[weakref.ref]:
    session_id = await db(make_session, agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True)
    await driver.wait_speaking(False)
    runtime = driver.call.job
    refs = [weakref.ref(o) for o in (runtime, runtime.recorder, runtime.session, driver.call)]
    del runtime
    await driver.hangup()
    return refs


def _forget_captured_tracebacks() -> None:
    """pytest's log capture handlers keep this test's records, and a record's exception
    traceback holds the frames (and so the job) it was raised in."""
    for handler in logging.getLogger().handlers:
        for record in getattr(handler, "records", []):
            record.exc_info = record.args = None


async def test_a_finished_call_is_not_kept_alive_by_the_next_ones(agent, prewarmed):
    # The channel layer starts its shared Redis reader from inside the first call's control
    # listener; it must not keep that call's context (and through it the whole job).
    first = await _greeting_call(agent)
    await _greeting_call(agent)
    _forget_captured_tracebacks()
    gc.collect()
    alive = [type(ref()).__name__ for ref in first if ref() is not None]
    assert alive == []
