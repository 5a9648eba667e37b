"""Signed post-call report webhooks: retried with backoff, one delivery id, delivered once."""

from __future__ import annotations

import json
import uuid

import pytest
from django.utils import timezone

from sessions_app import reports, tasks
from sessions_app.models import SessionEvent, VoiceSession
from sessions_app.services import api_client_create, session_transition
from tests.factories import make_voice_session
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    made: list[WebhookReceiver] = []

    def make(statuses: list[int]) -> WebhookReceiver:
        made.append(WebhookReceiver(statuses))
        return made[-1]

    yield make
    for item in made:
        item.close()


def _ended_session(agent, webhook_url: str, capture) -> tuple[VoiceSession, str]:
    client, _key = api_client_create(name=f"hook-{uuid.uuid4().hex[:6]}", webhook_url=webhook_url)
    session = VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        api_client=client,
        caller_id="caller",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        state="active",
    )
    with capture(execute=True):
        session_transition(session_id=session.id, to_state="ended", reason="caller hung up")
    session.refresh_from_db()
    return session, client.webhook_secret


def test_it_retries_a_failing_webhook_with_the_same_delivery_id_and_a_valid_signature(
    agent, eager_celery_with_retries, receiver, django_capture_on_commit_callbacks
):
    hook = receiver([503, 500])

    session, secret = _ended_session(agent, hook.url, django_capture_on_commit_callbacks)

    assert len(hook.requests) == 3  # two failures, then delivered
    delivery_ids = {r.headers["X-Voice-Delivery"] for r in hook.requests}
    assert delivery_ids == {str(session.report_delivery_id)}
    assert [r.headers["X-Voice-Attempt"] for r in hook.requests] == ["1", "2", "3"]
    bodies = {r.body for r in hook.requests}
    assert len(bodies) == 1  # the same bytes every time
    for headers, body in ((r.headers, r.body) for r in hook.requests):
        assert headers["X-Voice-Event"] == "session.report"
        assert reports.report_signature_verify(secret=secret, header=headers["X-Voice-Signature"], body=body)
        assert not reports.report_signature_verify(
            secret="wrong-secret", header=headers["X-Voice-Signature"], body=body
        )
        assert not reports.report_signature_verify(secret=secret, header=headers["X-Voice-Signature"], body=body + b" ")
    payload = json.loads(bodies.pop())
    assert payload["delivery_id"] == str(session.report_delivery_id)
    assert payload["session"]["id"] == str(session.id)
    assert payload["report"] == session.report
    assert session.report_delivered_at is not None
    delivered = SessionEvent.objects.get(session=session, type="report.delivered")
    assert delivered.payload == {"attempts": 3, "http_status": 200}


def test_a_delivered_report_is_never_sent_again(
    agent, eager_celery_with_retries, receiver, django_capture_on_commit_callbacks
):
    hook = receiver([])
    session, _ = _ended_session(agent, hook.url, django_capture_on_commit_callbacks)
    assert len(hook.requests) == 1

    # A redelivered report task and a redelivered delivery task both find it delivered.
    tasks.session_post_call_report.delay(str(session.id)).get()
    result = tasks.session_report_webhook_deliver.delay(str(session.id)).get()

    assert result["status"] == "already_delivered"
    assert len(hook.requests) == 1


def test_it_gives_up_after_the_last_retry_and_records_why(
    agent, eager_celery_with_retries, receiver, django_capture_on_commit_callbacks
):
    hook = receiver([500] * 50)
    session, _ = _ended_session(agent, hook.url, django_capture_on_commit_callbacks)

    assert len(hook.requests) == tasks.REPORT_WEBHOOK_MAX_RETRIES + 1
    assert session.report_delivered_at is None
    failed = SessionEvent.objects.get(session=session, type="report.delivery_failed")
    assert failed.payload == {"attempts": tasks.REPORT_WEBHOOK_MAX_RETRIES + 1, "detail": "HTTP 500"}


def test_it_refuses_to_send_an_unsigned_report(
    agent, eager_celery_with_retries, receiver, django_capture_on_commit_callbacks
):
    hook = receiver([])
    client, _key = api_client_create(name="no-secret", webhook_url=hook.url)
    client.webhook_secret = ""
    client.save()
    session = VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        api_client=client,
        caller_id="caller",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        state="active",
    )
    with django_capture_on_commit_callbacks(execute=True):
        session_transition(session_id=session.id, to_state="ended")

    assert hook.requests == []
    assert (
        "no webhook secret"
        in SessionEvent.objects.get(session=session, type="report.delivery_failed").payload["detail"]
    )


def test_a_session_of_a_client_without_webhook_gets_a_report_and_no_delivery(
    agent, eager_celery_with_retries, django_capture_on_commit_callbacks
):
    session, _ = _ended_session(agent, "", django_capture_on_commit_callbacks)
    assert session.report is not None
    assert tasks.session_report_webhook_deliver.delay(str(session.id)).get()["status"] == "no_webhook"


def test_backoff_grows_and_stays_below_the_visibility_timeout(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    delays = [tasks.delivery_backoff_seconds(n) for n in range(8)]
    assert 8 <= delays[0] <= 12
    assert 16 <= delays[1] <= 24
    assert max(delays) <= tasks.REPORT_WEBHOOK_BACKOFF_MAX_S
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    assert max(tasks.delivery_backoff_seconds(n) for n in range(8)) <= 30


def test_a_stale_signature_is_rejected():
    header = reports.report_signature(secret="s3cret", timestamp=1_000, body=b"{}")
    assert reports.report_signature_verify(secret="s3cret", header=header, body=b"{}", now=1_100)
    assert not reports.report_signature_verify(secret="s3cret", header=header, body=b"{}", now=2_000)
    assert not reports.report_signature_verify(secret="s3cret", header="garbage", body=b"{}", now=1_000)


def test_tasks_for_a_deleted_session_end_quietly(eager_celery_with_retries):
    """Retention (or an operator) may delete a session after its tasks were queued."""
    gone = str(uuid.uuid4())
    assert tasks.session_post_call_report.delay(gone).get() == {"status": "gone"}
    assert tasks.session_report_webhook_deliver.delay(gone).get() == {"status": "gone", "attempts": 1}


def _reported_session(agent, webhook_url: str) -> VoiceSession:
    """An ended session of a client with a webhook, its report stored and not yet sent."""
    client, _key = api_client_create(name=f"lease-{uuid.uuid4().hex[:6]}", webhook_url=webhook_url)
    session = make_voice_session(agent, api_client=client, state="ended")
    reports.session_report_create(session_id=session.id)
    return session


def test_an_attempt_never_sends_while_another_holds_the_send_lease_nor_after_it_delivered(agent, receiver):
    """Two delivery messages for one session (a redelivered report task queues a second one)
    running at once: the second finds the first one's lease and does not send."""
    hook = receiver([])
    session = _reported_session(agent, hook.url)
    # Attempt A claimed the lease and is sending (its POST is in flight).
    assert reports.session_report_delivery_claim(session_id=session.id, holder="task-a:0") == ("claimed", 0.0)

    second = reports.session_report_deliver(session_id=session.id, holder="task-b:0")
    assert second.status == "busy"
    assert 0 < second.retry_in_s <= reports.DELIVERY_LEASE_S
    assert hook.requests == []

    # A's message redelivered after its worker died is the same holder: it takes over at once.
    first = reports.session_report_deliver(session_id=session.id, holder="task-a:0")
    assert first.status == "delivered"
    assert len(hook.requests) == 1

    # After the recorded success, nobody sends again, whoever holds or wants the lease.
    for holder in ("task-a:0", "task-b:0", "task-c:0"):
        assert reports.session_report_deliver(session_id=session.id, holder=holder).status == "already_delivered"
    assert len(hook.requests) == 1
    assert SessionEvent.objects.filter(session=session, type="report.delivered").count() == 1


def test_a_lapsed_lease_is_taken_over_and_a_failed_attempt_gives_it_back(agent, receiver):
    hook = receiver([503])
    session = _reported_session(agent, hook.url)
    reports.session_report_delivery_claim(session_id=session.id, holder="dead:0")
    VoiceSession.objects.filter(pk=session.id).update(report_delivery_lease_until=timezone.now())  # it lapsed

    failed = reports.session_report_deliver(session_id=session.id, holder="next:0")
    assert failed.status == "retry"  # the 503
    session.refresh_from_db()
    assert (session.report_delivery_holder, session.report_delivery_lease_until) == ("", None)  # given back

    assert reports.session_report_deliver(session_id=session.id, holder="other:0").status == "delivered"
    assert len(hook.requests) == 2


def test_a_delivery_task_finding_the_lease_taken_retries_without_sending(agent, eager_celery_with_retries, receiver):
    hook = receiver([])
    session = _reported_session(agent, hook.url)
    reports.session_report_delivery_claim(session_id=session.id, holder="someone-else:0")

    result = tasks.session_report_webhook_deliver.delay(str(session.id)).get()

    assert result["status"] == "busy"  # eager retries come at once, so they all found it taken
    assert hook.requests == []
