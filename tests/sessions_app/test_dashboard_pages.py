"""Dashboard pages and their JSON reads: who may see them, and what they render."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import Group, User

from sessions_app.models import SessionState, VoiceSession
from sessions_app.services import session_transition
from sessions_app.turns import turn_record
from tests.factories import make_voice_session

pytestmark = pytest.mark.django_db


def _json_script(html: str, element_id: str):
    start = html.index(f'id="{element_id}"')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/sessions/{id}/"])
def test_it_sends_anonymous_visitors_to_the_dashboard_login(client, agent, path) -> None:
    session = make_voice_session(agent)
    url = path.format(id=session.id)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/dashboard/login/?next={url}"


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/dashboard/sessions/{id}/", "/dashboard/api/kpis", "/dashboard/api/sessions/{id}"]
)
def test_it_forbids_users_who_are_not_support_staff(client, outsider_user, agent, path) -> None:
    session = make_voice_session(agent)
    client.force_login(outsider_user)
    response = client.get(path.format(id=session.id))
    assert response.status_code == 403


@pytest.mark.parametrize("path", ["/dashboard/api/kpis", "/dashboard/api/sessions/{id}"])
def test_json_reads_answer_401_to_anonymous_callers(client, agent, path) -> None:
    session = make_voice_session(agent)
    response = client.get(path.format(id=session.id))
    assert response.status_code == 401
    assert response.json()["error"] == "login_required"


def test_a_support_group_member_who_is_not_staff_signs_in_and_sees_the_dashboard(client, agent) -> None:
    user = User.objects.create_user("helpdesk", password="helpdesk-pass-1")
    user.groups.add(Group.objects.get_or_create(name="Support staff")[0])
    assert client.get("/dashboard/login/?next=/dashboard/").status_code == 200
    response = client.post(
        "/dashboard/login/", {"username": "helpdesk", "password": "helpdesk-pass-1", "next": "/dashboard/"}
    )
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_staff_signing_in_at_the_dashboard_login_land_on_the_dashboard(client, staff_user) -> None:
    # As a new user would: the login page opened directly, no ?next= (it used to go to /call/).
    response = client.post("/dashboard/login/", {"username": "staff", "password": "staff-pass-123"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/", response.get("Location")


def test_a_wrong_password_is_told_on_the_login_page(client, staff_user) -> None:
    response = client.post("/dashboard/login/", {"username": "staff", "password": "nope", "next": "/dashboard/"})
    assert response.status_code == 200
    assert "did not match" in response.content.decode()


def test_the_dashboard_embeds_rows_kpis_and_socket_config(client, staff_user, agent) -> None:
    live = make_voice_session(agent, caller_id="live-caller")
    session_transition(session_id=live.id, to_state=SessionState.ACTIVE)
    turn_record(session_id=live.id, data={"index": 1, "e2e_ms": 700, "ttfa_ms": 600})
    done = make_voice_session(agent, caller_id="done-caller")
    session_transition(session_id=done.id, to_state=SessionState.ENDED, reason="hangup")
    client.force_login(staff_user)

    response = client.get("/dashboard/?window=5m")
    assert response.status_code == 200
    html = response.content.decode()
    rows = _json_script(html, "dashboard-rows")
    assert [r["caller_id"] for r in rows] == ["live-caller", "done-caller"]  # live first
    kpis = _json_script(html, "dashboard-kpis")
    assert kpis["window"] == "5m"
    assert kpis["overall"]["e2e_p50_ms"] == 700
    config = _json_script(html, "dashboard-config")
    assert config["wsDashboard"] == "/ws/dashboard/"
    assert config["budgets"]["support"] == agent.budgets_ms()
    # No CDN: every script and stylesheet is served from our own static files.
    assert "http://" not in html.split("<body")[0] and "https://" not in html


def test_an_unknown_window_falls_back_on_the_page_and_is_refused_by_the_api(client, staff_user) -> None:
    client.force_login(staff_user)
    assert _json_script(client.get("/dashboard/?window=7y").content.decode(), "dashboard-kpis")["window"] == "1h"
    response = client.get("/dashboard/api/kpis?window=7y")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_window"


def test_the_session_page_embeds_turns_events_budgets_and_report(client, staff_user, agent) -> None:
    session = make_voice_session(agent)
    session_transition(session_id=session.id, to_state=SessionState.ACTIVE)
    turn_record(
        session_id=session.id,
        data={
            "index": 1,
            "user_text": "Where is my order?",
            "generated_text": "It left the warehouse this morning and arrives tomorrow.",
            "heard_text": "It left the warehouse",
            "interrupted": True,
            "interrupt_source": "vad",
            "stt_ms": 900,
            "e2e_ms": 1000,
        },
    )
    VoiceSession.objects.filter(pk=session.pk).update(report={"summary": "Order status asked.", "turns": 1})
    client.force_login(staff_user)

    response = client.get(f"/dashboard/sessions/{session.id}/")
    assert response.status_code == 200
    detail = _json_script(response.content.decode(), "session-detail")
    assert detail["budgets_ms"] == agent.budgets_ms()
    (turn,) = detail["turns"]
    assert (turn["heard_text"], turn["interrupted"], turn["breaches"]) == ("It left the warehouse", True, ["stt"])
    assert [e["seq"] for e in detail["events"]] == [1, 2]
    assert detail["report"]["summary"] == "Order status asked."
    config = _json_script(response.content.decode(), "dashboard-config")
    assert config["wsSession"] == f"/ws/sessions/{session.id}/"


def test_the_session_page_and_json_answer_404_for_an_unknown_session(client, staff_user) -> None:
    client.force_login(staff_user)
    assert client.get(f"/dashboard/sessions/{uuid.uuid4()}/").status_code == 404
    assert client.get(f"/dashboard/api/sessions/{uuid.uuid4()}").status_code == 404


def test_the_static_assets_the_pages_load_exist(client, staff_user) -> None:
    from django.contrib.staticfiles import finders

    for name in ("dashboard/dashboard.css", "dashboard/live.js", "dashboard/index.js", "dashboard/session.js"):
        assert finders.find(name), name
