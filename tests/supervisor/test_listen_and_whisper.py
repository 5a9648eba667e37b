"""Support staff step into a live call (issue 33): listen in (a hidden, subscribe-only
token) and whisper guidance to the agent (a supervisor note in its context). Each action
is its own permission; every use is an event on the session's timeline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client, override_settings
from livekit.agents.llm import ChatContext
from livekit.api import TokenVerifier

from agents_app.runtime.providers.offline_llm import OfflineStandInLLM
from agents_app.runtime.supervisor import note_text, supervisor_note
from sessions_app import broadcast
from sessions_app.models import SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_create, session_transition
from sessions_app.tokens import caller_token_mint

pytestmark = pytest.mark.django_db
LIVEKIT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_LOCAL_MODE": False,
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "a-secret-of-at-least-thirty-two-characters",
}


@pytest.fixture
def live(agent) -> VoiceSession:
    session, _ = session_create(agent_slug=agent.slug, caller_id="c1")
    return session_transition(session_id=session.pk, to_state=SessionState.ACTIVE, reason="test")


@pytest.fixture
def published(monkeypatch) -> list[tuple[list[str], dict[str, Any]]]:
    sent: list[tuple[list[str], dict[str, Any]]] = []
    monkeypatch.setattr(broadcast, "publish", lambda groups, message: sent.append((list(groups), message)))
    return sent


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _post(client: Client, session: VoiceSession, action: str, body: dict[str, Any] | None = None):
    return client.post(
        f"/dashboard/api/sessions/{session.pk}/{action}",
        data=json.dumps(body or {}),
        content_type="application/json",
    )


# --- listen in -------------------------------------------------------------------------------


@override_settings(**LIVEKIT)
def test_support_staff_listen_in_hidden_and_never_able_to_publish(staff_user, live):
    response = _post(_client(staff_user), live, "listen")
    assert response.status_code == 200, response.content
    body = response.json()
    claims = TokenVerifier(LIVEKIT["LIVEKIT_API_KEY"], LIVEKIT["LIVEKIT_API_SECRET"]).verify(body["token"])
    video = claims.video
    assert video.room == live.room_name and video.room_join and video.can_subscribe
    assert video.hidden and not video.can_publish and not video.can_publish_data and not video.room_admin
    assert claims.identity.startswith("staff-staff-") and body["identity"] == claims.identity
    assert body["url"] == LIVEKIT["LIVEKIT_URL"]
    event = SessionEvent.objects.get(session=live, type="staff.listening").payload
    assert event["user"] == "staff" and event["identity"] == claims.identity


@override_settings(**LIVEKIT)
def test_a_callers_token_is_never_a_listeners(live):
    token = caller_token_mint(room=live.room_name, caller_id="c1")
    claims = TokenVerifier(LIVEKIT["LIVEKIT_API_KEY"], LIVEKIT["LIVEKIT_API_SECRET"]).verify(token.token)
    assert not claims.video.hidden and not claims.identity.startswith("staff-")


def test_staff_without_the_permission_are_refused_each_action(live):
    group = Group.objects.get(name="Support staff")
    user = User.objects.create_user("trainee", password="trainee-pass-123")
    user.groups.add(group)
    client = _client(user)
    assert _post(client, live, "listen").json()["error"] == "listen_unavailable"  # allowed: the group may listen
    for codename, action in (("listen_voicesession", "listen"), ("whisper_voicesession", "whisper")):
        group.permissions.remove(Permission.objects.get(codename=codename))
        user = User.objects.get(pk=user.pk)  # permissions are cached per user object
        client = _client(user)
        response = _post(client, live, action, {"text": "offer a callback"})
        assert response.status_code == 403 and response.json()["error"] == "forbidden", action
    assert not SessionEvent.objects.filter(session=live, type="staff.whisper").exists()


def test_anonymous_and_callers_are_refused(live, django_user_model):
    assert _post(Client(), live, "whisper", {"text": "x"}).status_code == 401
    caller = django_user_model.objects.create_user("caller", password="caller-pass-123")
    assert _post(_client(caller), live, "listen").status_code == 403


@override_settings(**LIVEKIT)
def test_an_ended_call_cannot_be_listened_to(staff_user, live):
    session_transition(session_id=live.pk, to_state=SessionState.ENDED, reason="test")
    response = _post(_client(staff_user), live, "listen")
    assert response.status_code == 409 and response.json()["error"] == "session_final"


def test_the_local_transport_has_no_room_to_listen_to(staff_user, live):
    response = _post(_client(staff_user), live, "listen")
    assert response.status_code == 502 and response.json()["error"] == "listen_unavailable"


def test_the_actions_need_the_csrf_token(staff_user, live):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    assert _post(client, live, "whisper", {"text": "x"}).status_code == 403
    assert not SessionEvent.objects.filter(session=live, type="staff.whisper").exists()


# --- whisper ---------------------------------------------------------------------------------


def test_a_whisper_is_on_the_timeline_and_sent_to_the_agent(
    staff_user, live, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(_client(staff_user), live, "whisper", {"text": "  Offer the caller\n a free delivery. "})
    assert response.status_code == 202, response.content
    event = SessionEvent.objects.get(session=live, type="staff.whisper")
    assert event.payload == {"user": "staff", "text": "Offer the caller a free delivery."}
    [(groups, message)] = [p for p in published if p[1].get("type") == "agent.whisper"]
    assert groups == [broadcast.agent_control_group(live.pk)]
    assert message["text"] == "Offer the caller a free delivery." and message["event_seq"] == event.seq


@pytest.mark.parametrize(
    ("text", "code"), [("", "empty_whisper"), ("   ", "empty_whisper"), ("x" * 501, "whisper_too_long")]
)
def test_an_empty_or_long_whisper_is_refused(staff_user, live, text, code):
    response = _post(_client(staff_user), live, "whisper", {"text": text})
    assert response.status_code == 422 and response.json()["error"] == code


def test_a_malformed_whisper_body_is_a_400(staff_user, live):
    client = _client(staff_user)
    response = client.post(f"/dashboard/api/sessions/{live.pk}/whisper", data="{", content_type="application/json")
    assert response.status_code == 400


def test_an_unknown_session_is_a_404(staff_user):
    response = _client(staff_user).post(
        "/dashboard/api/sessions/00000000-0000-0000-0000-000000000000/whisper",
        data=json.dumps({"text": "x"}),
        content_type="application/json",
    )
    assert response.status_code == 404


# --- the agent's side ------------------------------------------------------------------------


def test_the_stand_in_relays_a_note_given_since_it_last_spoke():
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="You answer calls for Globex.")
    ctx.add_message(role="user", content="hello")
    ctx.add_message(role="assistant", content="Hello, how can I help?")
    ctx.add_message(role="system", content=supervisor_note("Offer a free delivery."))
    ctx.add_message(role="user", content="I want a pizza")
    text, call = OfflineStandInLLM().reply_for(ctx, [])
    assert call is None and text.endswith("My colleague reminds me: Offer a free delivery.")
    assert "Globex" in text  # the prompt, not the note, is still its instructions
    ctx.add_message(role="assistant", content=text)
    ctx.add_message(role="user", content="thanks")
    later, _ = OfflineStandInLLM().reply_for(ctx, [])
    assert "reminds me" not in later  # one note, one reply


def test_a_note_reads_as_guidance_and_is_recognised():
    note = supervisor_note("Be brief.")
    assert "never read it out" in note and note_text(note) == "Be brief." and note_text("Be brief.") is None


class _Agent:
    def __init__(self) -> None:
        self.chat_ctx = ChatContext.empty()
        self.chat_ctx.add_message(role="system", content="instructions")

    async def update_chat_ctx(self, chat_ctx: ChatContext) -> None:
        self.chat_ctx = chat_ctx


def test_the_job_puts_the_whisper_in_the_agents_context():
    from agents_app.runtime.worker.entrypoint import JobRuntime

    runtime = JobRuntime.__new__(JobRuntime)  # only what `whisper` uses
    agent = _Agent()
    runtime.session = type("Session", (), {"current_agent": agent})()
    events: list[tuple[str, dict[str, Any]]] = []
    runtime.recorder = type(
        "Recorder", (), {"record_event": lambda self, kind, payload: events.append((kind, payload))}
    )()
    asyncio.run(runtime.whisper("Offer a free delivery."))
    last = agent.chat_ctx.items[-1]
    assert last.role == "system" and note_text(last.text_content) == "Offer a free delivery."
    assert events == [("agent.supervisor_note", {"chars": 22})]


def test_the_session_page_offers_what_the_user_may_do(staff_user, live):
    page = _client(staff_user).get(f"/dashboard/sessions/{live.pk}/").content.decode()
    assert 'id="step-in"' in page and 'id="listen"' in page and 'id="whisper-form"' in page
    assert "csrfmiddlewaretoken" in page and "livekit-client.umd.js" in page
    group = Group.objects.get(name="Support staff")
    group.permissions.remove(*Permission.objects.filter(codename__in=["listen_voicesession", "whisper_voicesession"]))
    page = _client(User.objects.get(pk=staff_user.pk)).get(f"/dashboard/sessions/{live.pk}/").content.decode()
    assert 'id="step-in"' not in page and "livekit-client.umd.js" not in page


def test_the_post_call_report_says_what_staff_did(staff_user, live, published):
    from sessions_app.reports import report_build

    _post(_client(staff_user), live, "whisper", {"text": "Offer a callback."})
    actions = report_build(session=VoiceSession.objects.get(pk=live.pk))["staff_actions"]
    assert [(a["user"], a["action"]) for a in actions] == [("staff", "whispered")]
    assert "Offer a callback." not in str(actions)  # the report says who acted, the timeline what
