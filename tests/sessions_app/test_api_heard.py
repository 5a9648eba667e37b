"""PUT /api/v1/sessions/{id}/turns/{index}/heard: the caller's heard gap of a turn.

Owner only (others get 404), idempotent per turn (same body → same answer, other body →
409), validated, compared with the platform's e2e against HEARD_GAP_TOLERANCE_MS, counted
in Prometheus and announced live (`turn.heard`).
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from sessions_app.dashboard_selectors import session_missed
from sessions_app.models import SessionEvent, Turn, VoiceSession
from sessions_app.services import session_create
from sessions_app.turns import turn_record
from tests.factories import make_fresh_agent
from tests.metrics_text import metric_samples, metric_value

pytestmark = pytest.mark.django_db


def _url(session_id, index) -> str:
    return f"/api/v1/sessions/{session_id}/turns/{index}/heard"


def _put(http: Client, key: str, session_id, index, body) -> object:
    data = body if isinstance(body, str) else json.dumps(body)
    return http.put(
        _url(session_id, index), data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


@pytest.fixture
def http() -> Client:
    return Client()


@pytest.fixture
def call(agent, owner_client, django_capture_on_commit_callbacks) -> VoiceSession:
    """A session of the owner with the greeting (turn 0) and one caller turn (e2e 1000 ms)."""
    client, _ = owner_client
    session, _ = session_create(agent_slug=agent.slug, caller_id="c1", api_client=client)
    with django_capture_on_commit_callbacks(execute=True):
        turn_record(session_id=session.pk, data={"index": 0, "generated_text": "Hello!", "e2e_ms": None})
        turn_record(
            session_id=session.pk, data={"index": 1, "user_text": "Do you have tea?", "e2e_ms": 1000.0, "ttfa_ms": 900}
        )
    return session


def test_the_owner_reports_a_heard_gap_and_the_api_returns_it(http, owner_client, call, settings) -> None:
    settings.HEARD_GAP_TOLERANCE_MS = 300
    _, key = owner_client
    response = _put(http, key, call.pk, 1, {"heard_gap_ms": 1180.5})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "session_id": str(call.pk),
        "index": 1,
        "heard_gap_ms": 1180.5,
        "barge_in_ms": None,
        "platform_gap_ms": 1000.0,
        "difference_ms": 180.5,
        "tolerance_ms": 300.0,
        "mismatch": False,
    }
    detail = http.get(f"/api/v1/sessions/{call.pk}", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    turn = detail["turns"][1]
    assert turn["heard_gap_ms"] == 1180.5 and turn["heard_difference_ms"] == 180.5
    assert turn["heard_mismatch"] is False and turn["heard_barge_in_ms"] is None
    assert detail["turns"][0]["heard_gap_ms"] is None


def test_the_same_report_again_gives_the_same_answer_and_one_event(http, owner_client, call) -> None:
    _, key = owner_client
    body = {"heard_gap_ms": 1250.0, "barge_in_ms": 420.0}
    first = _put(http, key, call.pk, 1, body)
    again = _put(http, key, call.pk, 1, body)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert SessionEvent.objects.filter(session=call, type="turn.heard").count() == 1
    assert Turn.objects.get(session=call, index=1).heard_barge_in_ms == 420.0


def test_a_different_report_for_the_same_turn_is_a_conflict(http, owner_client, call) -> None:
    _, key = owner_client
    assert _put(http, key, call.pk, 1, {"heard_gap_ms": 1250.0}).status_code == 200
    response = _put(http, key, call.pk, 1, {"heard_gap_ms": 1300.0})
    assert response.status_code == 409
    assert response.json()["code"] == "heard_conflict"
    assert response.json()["details"]["heard_gap_ms"] == 1250.0
    assert Turn.objects.get(session=call, index=1).heard_gap_ms == 1250.0  # unchanged


def test_another_client_gets_404_and_changes_nothing(http, other_client, call) -> None:
    _, other_key = other_client
    response = _put(http, other_key, call.pk, 1, {"heard_gap_ms": 10.0})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert _put(http, other_key, uuid.uuid4(), 1, {"heard_gap_ms": 10.0}).status_code == 404
    assert Turn.objects.get(session=call, index=1).heard_gap_ms is None


def test_an_agent_scope_key_and_no_key_are_refused(http, agent_scope_client, call) -> None:
    _, agent_key = agent_scope_client
    assert _put(http, agent_key, call.pk, 1, {"heard_gap_ms": 10.0}).status_code == 403
    response = http.put(_url(call.pk, 1), data=json.dumps({"heard_gap_ms": 10.0}), content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"heard_gap_ms": -1},
        {"heard_gap_ms": 600_001},
        {"heard_gap_ms": "fast"},
        {"heard_gap_ms": None},
        {"heard_gap_ms": 10, "barge_in_ms": -5},
        {"heard_gap_ms": 10, "extra": 1},
        '{"heard_gap_ms": NaN}',
        '{"heard_gap_ms": Infinity}',
        "not json",
    ],
)
def test_invalid_bodies_are_refused(http, owner_client, call, body) -> None:
    _, key = owner_client
    response = _put(http, key, call.pk, 1, body)
    assert response.status_code in (400, 422), (body, response.status_code, response.content)
    assert Turn.objects.get(session=call, index=1).heard_gap_ms is None


def test_an_unknown_turn_is_404_and_the_greeting_is_422(http, owner_client, call) -> None:
    _, key = owner_client
    for index in (-1, 2**31, 10**12, "one"):
        assert _put(http, key, call.pk, index, {"heard_gap_ms": 10.0}).status_code == 422, index
    unknown = _put(http, key, call.pk, 7, {"heard_gap_ms": 10.0})
    assert unknown.status_code == 404 and unknown.json()["code"] == "turn_not_found"
    greeting = _put(http, key, call.pk, 0, {"heard_gap_ms": 10.0})
    assert greeting.status_code == 422 and greeting.json()["code"] == "not_a_caller_turn"


def test_the_browser_endpoint_admits_the_caller_who_started_the_call_only(agent, owner_user_pair) -> None:
    mine, theirs = owner_user_pair
    session, _ = session_create(agent_slug=agent.slug, caller_id="web", user=mine)
    turn_record(session_id=session.pk, data={"index": 1, "user_text": "hello", "e2e_ms": 800.0})
    browser = Client(enforce_csrf_checks=False)
    browser.force_login(theirs)
    url = f"/api/v1/browser/sessions/{session.pk}/turns/1/heard"
    body = json.dumps({"heard_gap_ms": 900.0})
    assert browser.put(url, data=body, content_type="application/json").status_code == 404
    browser.force_login(mine)
    response = browser.put(url, data=body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["difference_ms"] == 100.0


@pytest.fixture
def owner_user_pair(django_user_model):
    return (
        django_user_model.objects.create_user("caller-a", password="x"),
        django_user_model.objects.create_user("caller-b", password="x"),
    )


# --- the flag, the metrics, the live message ------------------------------------------------


def _metric(client: Client, name: str, agent: str) -> float:
    return metric_value(metric_samples(client.get("/metrics").content.decode()), name, agent=agent)


def test_beyond_the_tolerance_is_flagged_and_counted(
    http, owner_client, settings, django_capture_on_commit_callbacks
) -> None:
    settings.HEARD_GAP_TOLERANCE_MS = 300
    client, key = owner_client
    agent = make_fresh_agent()
    session, _ = session_create(agent_slug=agent.slug, caller_id="m", api_client=client)
    with django_capture_on_commit_callbacks(execute=True):
        for index, e2e in ((1, 1000.0), (2, 1000.0), (3, 1000.0), (4, None)):
            turn_record(session_id=session.pk, data={"index": index, "user_text": f"line {index}", "e2e_ms": e2e})
    with django_capture_on_commit_callbacks(execute=True):
        within = _put(http, key, session.pk, 1, {"heard_gap_ms": 1300.0}).json()  # +300: at the edge, fine
        late = _put(http, key, session.pk, 2, {"heard_gap_ms": 1300.5}).json()  # +300.5: beyond
        early = _put(http, key, session.pk, 3, {"heard_gap_ms": 650.0}).json()  # −350: beyond
        unmeasured = _put(http, key, session.pk, 4, {"heard_gap_ms": 900.0}).json()  # nothing to compare
        _put(http, key, session.pk, 2, {"heard_gap_ms": 1300.5})  # a repeat counts nothing
    assert [within["mismatch"], late["mismatch"], early["mismatch"], unmeasured["mismatch"]] == [
        False,
        True,
        True,
        False,
    ]
    assert early["difference_ms"] == -350.0 and unmeasured["difference_ms"] is None
    assert _metric(http, "voice_heard_gap_mismatch_total", agent.slug) == 2
    assert _metric(http, "voice_heard_gap_seconds_count", agent.slug) == 4
    assert _metric(http, "voice_heard_gap_seconds_sum", agent.slug) == pytest.approx((1300 + 1300.5 + 650 + 900) / 1000)


def test_a_report_is_announced_live_and_replayed_on_resync(
    http, owner_client, call, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from sessions_app import broadcast
    from sessions_app.live.schemas import check

    published: list[dict] = []
    monkeypatch.setattr(broadcast, "publish_many", lambda groups, messages: published.extend(messages))
    _, key = owner_client
    before = SessionEvent.objects.filter(session=call).order_by("-seq").values_list("seq", flat=True).first()
    with django_capture_on_commit_callbacks(execute=True):
        _put(http, key, call.pk, 1, {"heard_gap_ms": 1500.0})
    assert [m["type"] for m in published] == ["event.added", "turn.heard"]
    for message in published:
        check(message)
    heard = published[1:]
    assert heard[-1]["turn"]["heard_gap_ms"] == 1500.0 and heard[-1]["turn"]["heard_mismatch"] is True
    event = SessionEvent.objects.get(session=call, type="turn.heard")
    assert heard[-1]["seq"] == event.seq
    assert event.payload == {
        "index": 1,
        "heard_gap_ms": 1500.0,
        "barge_in_ms": None,
        "difference_ms": 500.0,
        "mismatch": True,
    }
    missed = session_missed(session_id=call.pk, after_seq=before)
    assert [t["index"] for t in missed["turns"]] == [1]
    assert missed["turns"][0]["heard_gap_ms"] == 1500.0
