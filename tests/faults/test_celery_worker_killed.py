"""Fault: a Celery worker SIGKILLed while it delivers a post-call report webhook.

Real worker processes on the real broker (tests/celery_worker.py), a real receiver on
loopback (tests/webhook_receiver.py) that holds the first request open. The worker is
killed while the receiver holds it: the request reached the receiver, its answer never
reached the platform. What must hold (docs/reliability.md, "Celery worker killed mid-task"):

- the delivery task was acknowledged late, so it is redelivered to a new worker and the
  report is delivered;
- every request carries the session's one delivery id (the receiver de-duplicates on it);
- the session records exactly one successful delivery;
- once delivered, nothing sends it again: not a redelivered report task, not a
  redelivered delivery task, not the report backfill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import reports, tasks
from sessions_app.models import SessionEvent, VoiceSession
from sessions_app.services import api_client_create
from tests.celery_worker import CeleryWorkers, shared_database, wait_for
from tests.factories import make_voice_session
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]

VISIBILITY_TIMEOUT_S = 3


@pytest.fixture
def workers(tmp_path) -> Iterator[CeleryWorkers]:
    url, _read = shared_database(tmp_path)
    if url.startswith("sqlite"):
        pytest.skip("the worker must share the test's database: PostgreSQL (DATABASE_URL) only")
    pool = CeleryWorkers(
        tmp_path,
        url,
        visibility_timeout_s=VISIBILITY_TIMEOUT_S,
        route_here=True,  # the report task queues its delivery on the worker's own queue
        env={"OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8"},  # the receiver is on loopback
    )
    yield pool
    pool.stop_all()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(hold=1)
    yield hook
    hook.close()


def _ended_session_with_webhook(agent, url: str) -> VoiceSession:
    client, _key = api_client_create(name="fault-hook", webhook_url=url)
    now = timezone.now()
    return make_voice_session(
        agent, api_client=client, state="ended", started_at=now - timedelta(seconds=30), ended_at=now
    )


def test_a_worker_killed_during_a_webhook_delivery_leads_to_one_recorded_delivery_with_one_id(agent, workers, receiver):
    session = _ended_session_with_webhook(agent, receiver.url)
    first = workers.start()

    # The post-call report task builds the report and queues the delivery (on commit).
    tasks.session_post_call_report.apply_async(args=[str(session.id)], queue=workers.queue)
    wait_for(lambda: len(receiver.requests) == 1, 120, "the first delivery attempt at the receiver")
    assert first.poll() is None

    workers.kill(first)  # SIGKILL while the receiver holds the request
    killed_at = time.monotonic()
    session.refresh_from_db()
    assert session.report_delivered_at is None  # the answer never came back
    assert workers.unacked() == 1  # the delivery message is parked, not lost
    receiver.release()  # the held request's answer goes to a dead socket

    workers.start()  # a supervisor restarts the worker
    wait_for(lambda: VoiceSession.objects.get(pk=session.id).report_delivered_at, 120, "the redelivered delivery")
    redelivered_after_s = receiver.requests[1].at - killed_at

    session.refresh_from_db()
    assert len(receiver.requests) == 2
    assert {r.headers["X-Voice-Delivery"] for r in receiver.requests} == {str(session.report_delivery_id)}
    assert len({r.body for r in receiver.requests}) == 1  # the same signed bytes, resent
    assert json.loads(receiver.requests[0].body)["delivery_id"] == str(session.report_delivery_id)
    for request in receiver.requests:
        assert reports.report_signature_verify(
            secret=session.api_client.webhook_secret, header=request.headers["X-Voice-Signature"], body=request.body
        )
    delivered = SessionEvent.objects.filter(session=session, type="report.delivered")
    assert delivered.count() == 1
    assert SessionEvent.objects.filter(session=session, type="session.report_ready").count() == 1
    assert not SessionEvent.objects.filter(session=session, type="report.delivery_failed").exists()

    # Later: a redelivered report task, a redelivered delivery task and the backfill all
    # find it delivered. Each runs on the worker; the last result means the earlier ones ran.
    backfill = tasks.session_reports_backfill.apply_async(queue=workers.queue)
    again = tasks.session_post_call_report.apply_async(args=[str(session.id)], queue=workers.queue)
    resend = tasks.session_report_webhook_deliver.apply_async(args=[str(session.id)], queue=workers.queue)
    assert str(session.id) not in backfill.get(timeout=120)
    assert again.get(timeout=120) == {"status": "exists", "delivery_queued": False}
    assert resend.get(timeout=120)["status"] == "already_delivered"
    # One worker, one queue, first in first out: once this last task ran, whatever the
    # tasks above queued on commit has run too.
    assert (
        tasks.session_report_webhook_deliver.apply_async(args=[str(session.id)], queue=workers.queue).get(timeout=120)[
            "status"
        ]
        == "already_delivered"
    )

    assert len(receiver.requests) == 2
    assert SessionEvent.objects.filter(session=session, type="report.delivered").count() == 1
    assert workers.unacked() == 0
    print(
        "\nFIGURES "
        + json.dumps(
            {
                "fault": "celery_worker_killed",
                "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
                "redelivered_after_kill_s": round(redelivered_after_s, 2),
                "requests_at_receiver": len(receiver.requests),
                "recorded_deliveries": delivered.count(),
            }
        )
    )
