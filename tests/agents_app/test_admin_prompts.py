"""The prompt admin's buttons, through the Django test client, as a superuser and as a
member of "Prompt editors"; plus what "Support staff" may and may not do there."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from agents_app.models import Agent, PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish
from agents_app.signals import PROMPT_EDITORS, SUPPORT_STAFF

pytestmark = pytest.mark.django_db


def _user_in(group: str, username: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw-123456", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture(params=["superuser", "editor"])
def writer(request, superuser) -> Client:
    """A logged-in client allowed to edit prompts: a superuser, then a prompt editor."""
    user = superuser if request.param == "superuser" else _user_in(PROMPT_EDITORS, "editor")
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def support(db) -> Client:
    client = Client()
    client.force_login(_user_in(SUPPORT_STAFF, "support"))
    return client


@pytest.fixture
def draft(agent: Agent) -> PromptVersion:
    return prompt_draft_create(
        agent=agent,
        instructions="You are the support agent of {{company}}. Be brief and kind.\nAsk for the order number.",
        greeting="Hi from {{company}} in {{city}}!",
        variables={"company": "Acme"},
        change_note="kinder",
    )


def url(name: str, version: PromptVersion) -> str:
    return reverse(f"admin:agents_app_promptversion_{name}", args=[version.pk])


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_it_publishes_a_draft_after_a_confirmation_page_with_the_diff(writer, agent, draft):
    live = prompt_published(agent=agent)
    page = writer.get(url("publish", draft))
    assert page.status_code == 200
    assert b"Be brief and kind." in page.content  # the diff shows what changes
    assert prompt_published(agent=agent).pk == live.pk  # GET changes nothing

    response = writer.post(url("publish", draft))
    assert response.status_code == 302
    assert response["Location"] == url("change", draft)
    draft.refresh_from_db()
    live.refresh_from_db()
    assert draft.status == PromptStatus.PUBLISHED
    assert live.status == PromptStatus.ARCHIVED
    assert any("is now the live prompt" in m for m in messages_of(response))


def test_save_and_publish_saves_the_edit_then_publishes_it(writer, agent, draft):
    response = writer.post(
        url("change", draft),
        {
            "instructions": "Edited in the admin for {{company}}.",
            "greeting": "Hello",
            "variables": '{"company": "Globex"}',
            "change_note": "edited",
            "_publish": "Save and publish",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    draft.refresh_from_db()
    assert draft.instructions == "Edited in the admin for {{company}}."
    assert draft.status == PromptStatus.PUBLISHED


def test_adding_a_draft_numbers_it_and_records_the_author(writer, agent):
    response = writer.post(
        reverse("admin:agents_app_promptversion_add"),
        {"agent": agent.pk, "instructions": "New text", "greeting": "", "variables": "{}", "change_note": "why"},
    )
    assert response.status_code == 302, response.content[:2000]
    created = PromptVersion.objects.filter(agent=agent).order_by("-number").first()
    assert created.number == 2
    assert created.status == PromptStatus.DRAFT
    assert created.author_id == writer.user.pk
    assert created.change_note == "why"


def test_it_rejects_invalid_variables_json_with_a_clear_error_and_saves_nothing(writer, agent, draft):
    response = writer.post(
        url("change", draft),
        {"instructions": "Changed", "greeting": "", "variables": "{company: Acme}", "change_note": ""},
    )
    assert response.status_code == 200
    assert "This is not valid JSON" in response.content.decode()
    draft.refresh_from_db()
    assert draft.instructions.startswith("You are the support agent")


def test_it_rejects_variables_that_are_not_name_value_pairs(writer, agent, draft):
    response = writer.post(
        url("change", draft),
        {"instructions": "Changed", "greeting": "", "variables": '["Acme"]', "change_note": ""},
    )
    assert response.status_code == 200
    assert "Variables must be a JSON object" in response.content.decode()
    draft.refresh_from_db()
    assert draft.instructions.startswith("You are the support agent")


def test_a_published_version_is_read_only_and_a_forced_save_changes_nothing(writer, agent):
    live = prompt_published(agent=agent)
    page = writer.get(url("change", live))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="instructions"' not in html  # shown as text, not as an input
    assert 'name="_save"' not in html
    assert "read-only" in html

    response = writer.post(
        url("change", live),
        {"instructions": "Hacked", "greeting": "x", "variables": "{}", "change_note": "x", "_save": "Save"},
    )
    assert response.status_code == 302
    live.refresh_from_db()
    assert live.instructions.startswith("You are the support agent")
    assert live.status == PromptStatus.PUBLISHED
    assert any("cannot be edited; nothing was saved" in m for m in messages_of(response))


def test_rollback_publishes_a_copy_of_the_old_version(writer, agent, draft):
    v1 = prompt_published(agent=agent)
    prompt_publish(version=draft)
    page = writer.get(url("rollback", v1))
    assert page.status_code == 200
    assert b"Roll back" in page.content

    response = writer.post(url("rollback", v1), {"change_note": "v2 confused callers"})
    assert response.status_code == 302
    rolled = prompt_published(agent=agent)
    assert rolled.number == 3
    assert rolled.instructions == v1.instructions
    assert rolled.based_on_id == v1.pk
    assert rolled.change_note == "v2 confused callers"
    assert rolled.author_id == writer.user.pk
    assert response["Location"] == url("change", rolled)
    draft.refresh_from_db()
    assert draft.status == PromptStatus.ARCHIVED


def test_it_refuses_to_roll_back_to_the_live_version(writer, agent):
    live = prompt_published(agent=agent)
    response = writer.post(url("rollback", live))
    assert response.status_code == 302
    assert PromptVersion.objects.filter(agent=agent).count() == 1
    assert any("already live" in m for m in messages_of(response))


def test_new_draft_copies_a_version_and_leaves_it_untouched(writer, agent):
    live = prompt_published(agent=agent)
    response = writer.post(url("new_draft", live))
    new = PromptVersion.objects.get(agent=agent, number=2)
    assert response["Location"] == url("change", new)
    assert new.status == PromptStatus.DRAFT
    assert new.instructions == live.instructions and new.variables == live.variables
    assert new.based_on_id == live.pk
    assert prompt_published(agent=agent).pk == live.pk


def test_diff_page_shows_added_and_removed_lines_against_the_live_version(writer, agent, draft):
    response = writer.get(url("diff", draft))
    assert response.status_code == 200
    html = response.content.decode()
    assert "v1 (published)" in html and "v2 (draft)" in html
    assert 'class="diff_add"' in html or 'class="diff_chg"' in html
    assert "Ask for the order number." in html
    assert "Be brief and kind." in html


def test_diff_page_can_compare_with_any_other_version(writer, agent, draft):
    third = prompt_draft_create(agent=agent, instructions="Completely different")
    response = writer.get(url("diff", third) + f"?against={draft.pk}")
    assert response.status_code == 200
    assert "v2 (draft)" in response.content.decode()


def test_diff_escapes_prompt_text(writer, agent):
    evil = prompt_draft_create(agent=agent, instructions="<script>alert(1)</script>")
    html = writer.get(url("diff", evil)).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_preview_renders_sample_values_and_marks_missing_ones(writer, agent, draft):
    response = writer.get(url("preview", draft), {"company": "Globex"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "You are the support agent of Globex." in html
    assert "Hi from Globex in" in html
    assert '<mark class="vp-missing"' in html and "{{city}}" in html  # no value for city

    defaults = writer.get(url("preview", draft)).content.decode()
    assert "You are the support agent of Acme." in defaults


def test_it_refuses_to_delete_published_versions_but_deletes_drafts(writer, agent, draft):
    live = prompt_published(agent=agent)
    changelist = reverse("admin:agents_app_promptversion_changelist")
    refused = writer.post(changelist, {"action": "delete_selected_drafts", "_selected_action": [live.pk, draft.pk]})
    assert refused.status_code == 302
    assert PromptVersion.objects.filter(pk__in=[live.pk, draft.pk]).count() == 2
    assert writer.get(reverse("admin:agents_app_promptversion_delete", args=[live.pk])).status_code == 403

    writer.post(changelist, {"action": "delete_selected_drafts", "_selected_action": [draft.pk]})
    assert not PromptVersion.objects.filter(pk=draft.pk).exists()


def test_support_staff_can_read_prompts_but_not_publish_or_edit(support, agent, draft):
    assert support.get(url("diff", draft)).status_code == 200
    assert support.get(url("preview", draft)).status_code == 200
    assert support.get(url("change", draft)).status_code == 200
    assert support.post(url("publish", draft)).status_code == 403
    assert support.post(url("new_draft", draft)).status_code == 403
    support.post(url("change", draft), {"instructions": "x", "greeting": "", "variables": "{}", "change_note": ""})
    draft.refresh_from_db()
    assert draft.status == PromptStatus.DRAFT
    assert draft.instructions.startswith("You are the support agent")


def test_an_anonymous_visitor_is_sent_to_the_login_page(client, agent, draft):
    response = client.get(url("diff", draft))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_a_publish_race_lost_to_another_editor_shows_a_clear_error(writer, agent, draft, monkeypatch):
    from django.db import IntegrityError

    from agents_app import prompt_admin_pages

    def lose_race(**kwargs):
        raise IntegrityError("duplicate key value violates unique constraint prompt_one_published_per_agent")

    monkeypatch.setattr(prompt_admin_pages, "prompt_publish", lose_race)
    response = writer.post(url("publish", draft))
    assert response.status_code == 302
    assert any("published at the same moment" in m for m in messages_of(response))
    draft.refresh_from_db()
    assert draft.status == PromptStatus.DRAFT


def test_browser_line_endings_are_stored_as_plain_newlines(writer, agent, draft):
    writer.post(
        url("change", draft),
        {"instructions": "Line one\r\nLine two\r\n", "greeting": "Hi\r\nthere", "variables": "{}", "change_note": ""},
    )
    draft.refresh_from_db()
    assert draft.instructions == "Line one\nLine two"
    assert draft.greeting == "Hi\nthere"
