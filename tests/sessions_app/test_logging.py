"""Structured logs: context fields on every line, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from livekit import api as lk_api

from sessions_app import maintenance
from sessions_app.models import VoiceSession
from sessions_app.services import api_client_create
from sessions_app.tasks import session_post_call_report
from voiceplatform.celery import app as celery_app
from voiceplatform.logging import log_context

logger = logging.getLogger("sessions_app.tests.logging")


@pytest.fixture
def captured_logs() -> Iterator:
    """Configure settings.LOGGING with the given format; every handler writes to a buffer."""
    buffers: list[io.StringIO] = []

    def configure(fmt: str, level: str = "INFO") -> list[io.StringIO]:
        # Shallow copies: the handlers hold a stream object that cannot be deep-copied.
        config = {
            **settings.LOGGING,
            "handlers": {name: {**handler, "formatter": fmt} for name, handler in settings.LOGGING["handlers"].items()},
            "root": {**settings.LOGGING["root"], "level": level},
        }
        logging.config.dictConfig(config)
        for name in config["handlers"]:
            handler = logging._handlers.get(name)  # type: ignore[attr-defined]  # getHandlerByName is 3.12+
            assert isinstance(handler, logging.StreamHandler), f"handler {name} is not checked by this test"
            buffer = io.StringIO()
            handler.setStream(buffer)
            buffers.append(buffer)
        return buffers

    yield configure
    logging.config.dictConfig(settings.LOGGING)


def _output(buffers: list[io.StringIO]) -> str:
    return "".join(buffer.getvalue() for buffer in buffers)


def _secrets() -> dict[str, str]:
    token = (
        lk_api.AccessToken(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET)
        .with_identity("caller-1")
        .with_grants(lk_api.VideoGrants(room_join=True, room="room-1"))
        .to_jwt()
    )
    return {
        "livekit_token": token,
        "api_key": "vp_" + secrets.token_urlsafe(32),
        "bearer": secrets.token_urlsafe(24),  # an opaque bearer token with no telltale shape
        "webhook_secret": secrets.token_urlsafe(32),
        "livekit_api_secret": settings.LIVEKIT_API_SECRET,
        "db_password": "pg-" + secrets.token_hex(8),
    }


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_handler_redacts_tokens_keys_and_bearer_headers(captured_logs, fmt):
    buffers = captured_logs(fmt)
    s = _secrets()

    logger.info("joining with token %s", s["livekit_token"])
    logger.warning("client key %s rejected", s["api_key"])
    logger.info("headers: {'Authorization': 'Bearer %s'}", s["bearer"])
    logger.info("client config webhook_secret=%s", s["webhook_secret"])
    logger.info("worker settings api_secret: %s", s["livekit_api_secret"])
    logger.info("connecting to postgres://voice:%s@db:5432/voice", s["db_password"])
    logger.info("token in structured data", extra={"data": {"token": s["livekit_token"], "key": s["api_key"]}})
    try:
        raise RuntimeError(f"upstream refused {s['api_key']} with token {s['livekit_token']}")
    except RuntimeError:
        logger.exception("call failed")

    output = _output(buffers)
    assert output.count("\n") >= 8
    for name, value in s.items():
        assert value not in output, f"{name} leaked into the {fmt} log"
    assert output.count("[REDACTED]") >= 8
    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert any(line.get("exc") for line in lines)  # the traceback is kept, scrubbed


@pytest.mark.django_db
def test_an_api_request_with_a_key_leaves_no_key_in_any_log_line(captured_logs, client, agent):
    buffers = captured_logs("json", level="DEBUG")
    _client, key = api_client_create(name="log-check")
    wrong_key = "vp_" + secrets.token_urlsafe(32)

    ok = client.post(
        "/api/v1/sessions",
        data={"agent": agent.slug, "caller_id": "c-1"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    invalid = client.post(
        "/api/v1/sessions", data="{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    rejected = client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {wrong_key}")

    assert ok.status_code < 500 and invalid.status_code >= 400 and rejected.status_code == 401
    output = _output(buffers)
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    request_lines = [line for line in lines if line.get("logger") == "django.request"]
    assert request_lines  # the 4xx responses were logged …
    assert all(line.get("request_id", "").startswith("req-") for line in request_lines)  # … with their request id
    assert key not in output and wrong_key not in output
    assert key[:12] not in output  # not even a prefix long enough to narrow a search


@pytest.mark.django_db
def test_json_lines_carry_the_session_room_and_task_ids(captured_logs, agent, settings):
    buffers = captured_logs("json")
    settings.STALE_SESSION_SECONDS = 60
    session = VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        caller_id="caller",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        state="active",
    )
    VoiceSession.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=300))

    maintenance.sessions_reap_stale()
    celery_app.conf.task_always_eager = True
    try:
        result = session_post_call_report.delay(str(session.id))
    finally:
        celery_app.conf.task_always_eager = False

    lines = [json.loads(line) for line in _output(buffers).splitlines() if line.strip()]
    reaped = next(line for line in lines if line["message"].startswith("stale session failed"))
    assert reaped["session_id"] == str(session.id)
    assert reaped["room"] == session.room_name
    assert reaped["level"] == "warning"
    stored = next(line for line in lines if line["message"].startswith("post-call report stored"))
    assert stored["session_id"] == str(session.id)
    assert stored["task_id"] == result.id
    assert stored["task"] == "sessions_app.tasks.session_post_call_report"


def test_text_lines_are_human_readable_with_the_context_at_the_end(captured_logs):
    buffers = captured_logs("text")
    with log_context(session_id="s-1", agent="support", turn=3):
        logger.info("turn recorded")
    logger.info("outside")

    first, second = _output(buffers).splitlines()
    assert first.endswith("sessions_app.tests.logging: turn recorded [session_id=s-1 turn=3 agent=support]")
    assert second.endswith("sessions_app.tests.logging: outside")


def test_a_request_id_is_echoed_and_a_forged_one_is_replaced(client, captured_logs):
    buffers = captured_logs("json")

    given = client.get("/api/v1/sessions", HTTP_X_REQUEST_ID="trace-abc.123")
    forged = client.get("/api/v1/sessions", HTTP_X_REQUEST_ID='x" , "level": "critical')

    assert given["X-Request-Id"] == "trace-abc.123"
    assert forged["X-Request-Id"].startswith("req-")
    lines = [json.loads(line) for line in _output(buffers).splitlines() if line.strip()]
    assert {line["request_id"] for line in lines if line.get("logger") == "django.request"} == {
        "trace-abc.123",
        forged["X-Request-Id"],
    }


@pytest.mark.django_db
def test_an_eager_task_adds_its_ids_and_hands_the_callers_context_back(captured_logs, agent):
    from voiceplatform.logging import current_log_context

    buffers = captured_logs("json")
    session = VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        caller_id="caller",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
        state="ended",
    )
    celery_app.conf.task_always_eager = True
    try:
        with log_context(request_id="req-outer"):
            result = session_post_call_report.delay(str(session.id))
            after = current_log_context()
    finally:
        celery_app.conf.task_always_eager = False

    assert after == {"request_id": "req-outer"}  # no task fields left behind
    lines = [json.loads(line) for line in _output(buffers).splitlines() if line.strip()]
    stored = next(line for line in lines if line["message"].startswith("post-call report stored"))
    assert (stored["request_id"], stored["task_id"], stored["session_id"]) == ("req-outer", result.id, str(session.id))
