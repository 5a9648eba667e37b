"""A prompt editor edits tool definitions in the admin: the JSON Schema is checked on save."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from tools_app.models import ToolDefinition

pytestmark = pytest.mark.django_db


def tool_form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "lookup_menu",
        "description": "Look up the menu",
        "parameters": json.dumps({"type": "object", "properties": {"item": {"type": "string"}}}),
        "kind": "builtin",
        "enabled": "on",
        "builtin_name": "place_order",
        "http_url": "",
        "http_method": "POST",
        "http_headers": "{}",
        "http_secret_headers": "{}",
        "timeout_seconds": "5",
        "max_retries": "2",
    }
    data.update(overrides)
    return data


def test_an_editor_adds_a_tool_with_a_valid_schema(editor):
    response = editor.post(reverse("admin:tools_app_tooldefinition_add"), tool_form())
    assert response.status_code == 302, response.content.decode()[:3000]
    assert ToolDefinition.objects.get(name="lookup_menu").parameters["type"] == "object"


def test_an_invalid_json_schema_is_refused_with_a_clear_message_and_nothing_saved(editor):
    bad = json.dumps({"type": "object", "properties": {"item": {"type": "strng"}}})
    response = editor.post(reverse("admin:tools_app_tooldefinition_add"), tool_form(parameters=bad))
    assert response.status_code == 200
    assert "Invalid JSON Schema" in response.content.decode()
    assert not ToolDefinition.objects.filter(name="lookup_menu").exists()


def test_a_duplicate_tool_name_is_refused_and_nothing_saved(editor):
    editor.post(reverse("admin:tools_app_tooldefinition_add"), tool_form())
    response = editor.post(reverse("admin:tools_app_tooldefinition_add"), tool_form(description="second"))
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert ToolDefinition.objects.filter(name="lookup_menu").count() == 1


def test_an_editor_cannot_delete_tools(editor):
    tool = ToolDefinition.objects.create(name="keep_me", description="x", builtin_name="place_order")
    response = editor.post(reverse("admin:tools_app_tooldefinition_delete", args=[tool.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert ToolDefinition.objects.filter(pk=tool.pk).exists()
