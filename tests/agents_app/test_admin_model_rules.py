"""Model rules behind the admin: published prompts are immutable, one published version per
agent, tool parameters are a valid JSON Schema (with a clear message), unique tool names."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from agents_app.models import PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish
from tools_app.models import ToolDefinition, ToolKind

pytestmark = pytest.mark.django_db


def tool(**overrides: object) -> ToolDefinition:
    fields: dict[str, object] = {
        "name": "lookup_order",
        "description": "Look up an order",
        "kind": ToolKind.BUILTIN,
        "builtin_name": "lookup_order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
    }
    fields.update(overrides)
    return ToolDefinition(**fields)


def test_an_archived_version_is_immutable_too(agent):
    first = prompt_published(agent=agent)
    prompt_publish(version=prompt_draft_create(agent=agent, instructions="v2"))
    first.refresh_from_db()
    assert first.status == PromptStatus.ARCHIVED
    first.greeting = "changed"
    with pytest.raises(ValidationError):
        first.full_clean()
    with pytest.raises(ValidationError):
        first.save()


def test_a_draft_stays_editable(agent):
    draft = prompt_draft_create(agent=agent, instructions="draft")
    draft.instructions = "edited"
    draft.full_clean()
    draft.save()
    assert PromptVersion.objects.get(pk=draft.pk).instructions == "edited"


def test_publishing_keeps_exactly_one_published_version(agent):
    for text in ("two", "three", "four"):
        prompt_publish(version=prompt_draft_create(agent=agent, instructions=text))
    assert PromptVersion.objects.filter(agent=agent, status=PromptStatus.PUBLISHED).count() == 1
    assert prompt_published(agent=agent).instructions == "four"


def test_publishing_an_already_published_version_is_refused(agent):
    with pytest.raises(ValidationError):
        prompt_publish(version=prompt_published(agent=agent))


def test_a_valid_tool_schema_passes_full_clean():
    tool().full_clean()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "object", "properties": {"id": {"type": "strng"}}}, "Invalid JSON Schema"),
        ({"type": "array"}, '"type": "object"'),
        (["not", "an", "object"], "must be a JSON object"),
        ({"type": "object", "required": "id"}, "Invalid JSON Schema"),
    ],
)
def test_an_invalid_tool_schema_is_rejected_with_a_clear_message(parameters, message):
    with pytest.raises(ValidationError) as caught:
        tool(parameters=parameters).full_clean()
    assert message in " ".join(caught.value.message_dict["parameters"])


def test_tool_names_are_unique():
    tool().save()
    duplicate = tool(description="another")
    with pytest.raises(ValidationError) as caught:
        duplicate.full_clean()
    assert "name" in caught.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


def test_deleting_a_user_keeps_their_versions_and_change_notes(agent):
    user = User.objects.create_user("writer", "w@example.com", "pw-123456")
    draft = prompt_draft_create(agent=agent, instructions="x", author=user, change_note="note")
    user.delete()
    draft.refresh_from_db()
    assert draft.author is None and draft.change_note == "note"
