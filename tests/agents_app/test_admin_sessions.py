"""Sessions, turns, events and webhooks are read-only in the admin; API keys are shown once."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from agents_app.selectors import prompt_published
from sessions_app.models import ApiClient, LiveKitWebhookEvent, SessionEvent, Turn, VoiceSession
from sessions_app.services import api_client_authenticate, api_client_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def call(agent) -> VoiceSession:
    session = VoiceSession.objects.create(
        caller_id="caller-4711",
        room_name=f"room-{uuid.uuid4().hex[:8]}",
        agent=agent,
        prompt_version=prompt_published(agent=agent),
        state="ended",
        report={"summary": "Caller ordered two coffees", "turns": 1},
    )
    Turn.objects.create(session=session, index=0, user_text="two coffees please", heard_text="Sure, two coffees")
    SessionEvent.objects.create(session=session, seq=1, type="session.state_changed", payload={"to": "active"})
    return session


def test_session_page_shows_turns_events_and_report_read_only(admin_client_, call):
    response = admin_client_.get(reverse("admin:sessions_app_voicesession_change", args=[call.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "two coffees please" in html
    assert "session.state_changed" in html
    assert "Caller ordered two coffees" in html
    assert 'name="_save"' not in html
    assert 'name="caller_id"' not in html


def test_sessions_cannot_be_changed_added_or_deleted_even_by_a_superuser(admin_client_, call):
    change = reverse("admin:sessions_app_voicesession_change", args=[call.pk])
    admin_client_.post(change, {"caller_id": "changed", "state": "active"})
    call.refresh_from_db()
    assert call.caller_id == "caller-4711" and call.state == "ended"
    assert admin_client_.get(reverse("admin:sessions_app_voicesession_add")).status_code == 403
    assert admin_client_.post(reverse("admin:sessions_app_voicesession_delete", args=[call.pk])).status_code == 403
    assert VoiceSession.objects.filter(pk=call.pk).exists()


@pytest.mark.parametrize("term", ["caller-4711", "room-", "id"])
def test_session_search_finds_by_caller_room_and_id(admin_client_, call, term):
    query = str(call.pk)[:13] if term == "id" else term
    html = admin_client_.get(reverse("admin:sessions_app_voicesession_changelist"), {"q": query}).content.decode()
    assert str(call.pk) in html
    none = admin_client_.get(reverse("admin:sessions_app_voicesession_changelist"), {"q": "nobody-here"})
    assert str(call.pk) not in none.content.decode()


def test_session_list_filters_by_state_and_agent(admin_client_, call):
    changelist = reverse("admin:sessions_app_voicesession_changelist")
    assert str(call.pk) in admin_client_.get(changelist, {"state__exact": "ended"}).content.decode()
    assert str(call.pk) not in admin_client_.get(changelist, {"state__exact": "active"}).content.decode()
    assert str(call.pk) in admin_client_.get(changelist, {"agent__id__exact": call.agent_id}).content.decode()


def test_creating_an_api_client_shows_the_key_once_and_stores_only_its_hash(admin_client_):
    response = admin_client_.post(
        reverse("admin:sessions_app_apiclient_add"),
        {"name": "mobile-app", "scope": "client", "webhook_url": "", "active": "on"},
    )
    assert response.status_code == 302
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    key = next(word for m in shown for word in m.split() if word.startswith("vp_"))
    client = ApiClient.objects.get(name="mobile-app")
    assert api_client_authenticate(key=key) == client
    assert key not in (client.key_hash, client.key_prefix)

    # Issue 17, item 14: the key travels in the page, never in a cookie (the messages
    # framework's default storage is a signed, not encrypted, cookie).
    assert "messages" not in response.cookies, "the key must not ride in the messages cookie"
    assert not any(key in morsel.value for morsel in response.cookies.values())
    change_url = reverse("admin:sessions_app_apiclient_change", args=[client.pk])
    first = admin_client_.get(response["Location"]).content.decode()
    assert key in first  # the one time it is shown, as a message after the redirect
    page = admin_client_.get(change_url).content.decode()
    assert key not in page
    assert client.key_hash not in page
    assert client.key_prefix in page


def test_an_agent_key_created_in_the_admin_serves_the_agents_picked(admin_client_, agent):
    """Issue 17, item 5: what an agent-scope key may act for is set where it is made."""
    response = admin_client_.post(
        reverse("admin:sessions_app_apiclient_add"),
        {"name": "tool-runner", "scope": "agent", "webhook_url": "", "active": "on", "agents": [agent.pk]},
    )
    assert response.status_code == 302
    created = ApiClient.objects.get(name="tool-runner")
    assert list(created.agents.all()) == [agent]


def test_it_rejects_a_duplicate_api_client_name(admin_client_):
    admin_client_.post(reverse("admin:sessions_app_apiclient_add"), {"name": "dup", "scope": "client", "active": "on"})
    response = admin_client_.post(
        reverse("admin:sessions_app_apiclient_add"), {"name": "dup", "scope": "client", "active": "on"}
    )
    assert response.status_code == 200
    assert ApiClient.objects.filter(name="dup").count() == 1


def test_webhook_events_are_read_only(admin_client_):
    event = LiveKitWebhookEvent.objects.create(event_id="EV_1", event="room_started", payload={"room": "r"})
    page = admin_client_.get(reverse("admin:sessions_app_livekitwebhookevent_change", args=[event.pk]))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client_.get(reverse("admin:sessions_app_livekitwebhookevent_add")).status_code == 403


def test_adding_a_webhook_url_later_creates_a_signing_secret_shown_once(admin_client_):
    client, _ = api_client_create(name="later-hooks")
    response = admin_client_.post(
        reverse("admin:sessions_app_apiclient_change", args=[client.pk]),
        {"name": "later-hooks", "scope": "client", "webhook_url": "https://example.com/hook", "active": "on"},
    )
    assert response.status_code == 302
    client.refresh_from_db()
    assert client.webhook_secret
    assert any(client.webhook_secret in str(m) for m in get_messages(response.wsgi_request))
