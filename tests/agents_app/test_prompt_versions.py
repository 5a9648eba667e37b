from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from agents_app.models import PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish, prompt_render, prompt_rollback

pytestmark = pytest.mark.django_db


def test_it_publishes_a_draft_and_archives_the_previous_version(agent):
    first = prompt_published(agent=agent)
    draft = prompt_draft_create(agent=agent, instructions="Second version")
    prompt_publish(version=draft)
    first.refresh_from_db()
    assert first.status == PromptStatus.ARCHIVED
    assert prompt_published(agent=agent).pk == draft.pk
    assert draft.number == first.number + 1


def test_it_refuses_to_edit_a_published_version(agent):
    published = prompt_published(agent=agent)
    published.instructions = "rewritten"
    with pytest.raises(ValidationError):
        published.save()
    published.refresh_from_db()
    assert published.instructions.startswith("You are the support agent")


def test_database_allows_only_one_published_version_per_agent(agent):
    draft = prompt_draft_create(agent=agent, instructions="x")
    with pytest.raises(IntegrityError), transaction.atomic():
        PromptVersion.objects.filter(pk=draft.pk).update(status=PromptStatus.PUBLISHED)


def test_rollback_publishes_a_new_copy_of_an_old_version(agent):
    v1 = prompt_published(agent=agent)
    prompt_publish(version=prompt_draft_create(agent=agent, instructions="v2 text"))
    rolled = prompt_rollback(to_version=v1)
    assert rolled.number == 3
    assert rolled.status == PromptStatus.PUBLISHED
    assert rolled.instructions == v1.instructions
    assert rolled.based_on_id == v1.pk


def test_render_fills_placeholders_and_keeps_unknown_ones_visible(agent):
    version = prompt_published(agent=agent)
    rendered = prompt_render(version=version, values={"company": "Globex"})
    assert rendered["instructions"].startswith("You are the support agent of Globex.")
    assert prompt_render(version=version, values={})["greeting"].startswith("Hello, this is Acme")
    version2 = prompt_draft_create(agent=agent, instructions="Hi {{name}}")
    assert prompt_render(version=version2)["instructions"] == "Hi {{name}}"
