"""A real Celery worker process on the real Redis broker (REDIS_URL, else the embedded one).

- a task round-trips through the broker and the result backend;
- a worker SIGKILLed in the middle of a task, after the task's DB effect and before its
  acknowledgement, leads after redelivery (short visibility timeout) to exactly one effect.

The worker imports this module (`-I`) to register the probe tasks below.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.celery_worker import CeleryWorkers, redis_client, shared_database, wait_for
from voiceplatform.celery import app as celery_app

PROBE_TABLE = "ops_celery_probe_effect"
VISIBILITY_TIMEOUT_S = 3


@celery_app.task(name="tests.ops_probe.echo")
def probe_echo(value: str) -> dict[str, object]:
    return {"echo": value, "pid": os.getpid()}


@celery_app.task(name="tests.ops_probe.effect", acks_late=True)
def probe_effect(key: str, first_run_hold_s: float) -> str:
    """Idempotent by construction: the effect is a row keyed by `key`, inserted once."""
    from django.db import connection, transaction

    run = redis_client().incr(f"ops-probe:{key}:runs")
    redis_client().set(f"ops-probe:{key}:pid", os.getpid())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (key varchar(64) PRIMARY KEY, run integer NOT NULL)")
        cursor.execute(f"INSERT INTO {PROBE_TABLE} (key, run) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", [key, run])
    if run == 1:
        time.sleep(first_run_hold_s)  # the test kills the worker here: effect committed, message not acked
    return key


# --- harness -----------------------------------------------------------------------------------


@pytest.fixture
def workers(tmp_path) -> Iterator[CeleryWorkers]:
    url, read = shared_database(tmp_path)
    pool = CeleryWorkers(
        tmp_path, url, visibility_timeout_s=VISIBILITY_TIMEOUT_S, include=("tests.sessions_app.test_celery_worker",)
    )
    pool.read_effects = lambda key: read(f"SELECT key, run FROM {PROBE_TABLE} WHERE key = %s", [key])  # type: ignore[attr-defined]
    yield pool
    pool.stop_all()


@pytest.fixture
def probe_table_cleanup():
    yield
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PROBE_TABLE}")


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_task_round_trips_through_a_real_worker_and_logs_json_with_its_task_id(workers):
    worker = workers.start()

    result = probe_echo.apply_async(args=["ping"], queue=workers.queue)
    value = result.get(timeout=120)

    assert value["echo"] == "ping"
    assert value["pid"] == worker.pid  # ran in the worker process, not here

    def mine() -> list[dict]:
        lines = [json.loads(line) for line in workers.log(worker).splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("task_id") == result.id]

    # The "succeeded" line is written just after the result is stored: give it a moment.
    wait_for(lambda: bool(mine()), 30, "a JSON log line carrying the task id")
    assert {line["task"] for line in mine()} == {"tests.ops_probe.echo"}


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_task_leads_to_exactly_one_effect_after_redelivery(workers, probe_table_cleanup):
    key = uuid.uuid4().hex
    runs = redis_client()
    first = workers.start()

    result = probe_effect.apply_async(args=[key, 120], queue=workers.queue)
    wait_for(lambda: len(workers.read_effects(key)) == 1, 120, "the first run's effect")
    workers.kill(first)  # SIGKILL: no chance to ack, reject or clean up

    # The message is parked as unacknowledged under the probe's own keys, not lost.
    assert workers.unacked() == 1
    assert int(runs.get(f"ops-probe:{key}:runs")) == 1
    time.sleep(VISIBILITY_TIMEOUT_S + 0.5)

    workers.start()  # restores messages older than the visibility timeout
    assert result.get(timeout=120) == key

    assert int(runs.get(f"ops-probe:{key}:runs")) == 2  # really delivered twice
    assert workers.read_effects(key) == [(key, 1)]  # and still one effect, from the first run
    runs.delete(f"ops-probe:{key}:runs", f"ops-probe:{key}:pid")


@pytest.mark.django_db(transaction=True)
def test_a_killed_pool_child_is_requeued_at_once_and_still_has_one_effect(workers, probe_table_cleanup):
    """task_reject_on_worker_lost: the surviving parent requeues the task, no visibility wait."""
    key = uuid.uuid4().hex
    runs = redis_client()
    parent = workers.start(pool="prefork")

    result = probe_effect.apply_async(args=[key, 120], queue=workers.queue)
    wait_for(lambda: len(workers.read_effects(key)) == 1, 120, "the first run's effect")
    child = int(runs.get(f"ops-probe:{key}:pid"))
    assert child != parent.pid
    os.kill(child, signal.SIGKILL)  # the pool child dies mid-task; the parent survives

    assert result.get(timeout=120) == key
    assert int(runs.get(f"ops-probe:{key}:runs")) == 2
    assert int(runs.get(f"ops-probe:{key}:pid")) != child  # re-run in a fresh child
    assert workers.read_effects(key) == [(key, 1)]
    runs.delete(f"ops-probe:{key}:runs", f"ops-probe:{key}:pid")


def test_the_app_is_configured_for_at_least_once_delivery():
    from django.conf import settings

    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.broker_url == settings.CELERY_BROKER_URL
    assert conf.worker_hijack_root_logger is False


def test_beat_schedules_the_periodic_tasks():
    celery_app.loader.import_default_modules()
    schedule = celery_app.conf.beat_schedule
    tasks = {entry["task"] for entry in schedule.values()}
    assert tasks == {
        "sessions_app.tasks.sessions_reap_stale",
        "sessions_app.tasks.session_reports_backfill",
        "sessions_app.tasks.livekit_webhooks_backfill",
        "sessions_app.tasks.retention_purge",
        "tools_app.tasks.tool_invocations_resolve_expired",
    }
    assert tasks <= set(celery_app.tasks)
    reaper_every = schedule["reap-stale-sessions"]["schedule"].total_seconds()
    from django.conf import settings

    assert reaper_every <= settings.STALE_SESSION_SECONDS / 2
