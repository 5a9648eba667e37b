"""The tool admin: schema validated on save, secrets only as env names, ledger read-only."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tools_app.models import ToolDefinition, ToolInvocation

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def form(**overrides) -> dict:
    data = {
        "name": "lookup_order",
        "description": "Look up an order.",
        "parameters": json.dumps({"type": "object", "properties": {"id": {"type": "integer"}}}),
        "kind": "http",
        "enabled": "on",
        "builtin_name": "",
        "http_url": "https://crm.example.com/orders",
        "http_method": "POST",
        "http_headers": "{}",
        "http_secret_headers": json.dumps({"Authorization": "TOOL_SECRET_CRM_TOKEN"}),
        "timeout_seconds": "5",
        "max_retries": "2",
    }
    data.update(overrides)
    return data


def test_it_saves_a_valid_http_tool_with_only_the_env_var_name(admin_client_) -> None:
    response = admin_client_.post("/admin/tools_app/tooldefinition/add/", form())
    assert response.status_code == 302, response.content.decode()[:2000]
    tool = ToolDefinition.objects.get(name="lookup_order")
    assert tool.http_secret_headers == {"Authorization": "TOOL_SECRET_CRM_TOKEN"}


def test_an_invalid_json_schema_is_refused_with_a_clear_message(admin_client_) -> None:
    bad = json.dumps({"type": "object", "properties": {"id": {"type": "integr"}}})
    response = admin_client_.post("/admin/tools_app/tooldefinition/add/", form(parameters=bad))
    assert response.status_code == 200
    assert "Invalid JSON Schema at properties/id/type" in response.content.decode()
    assert not ToolDefinition.objects.exists()


def test_a_non_object_schema_is_refused(admin_client_) -> None:
    response = admin_client_.post(
        "/admin/tools_app/tooldefinition/add/", form(parameters=json.dumps({"type": "string"}))
    )
    assert "Tool parameters must be a schema of" in response.content.decode()


def test_a_secret_in_the_plain_headers_is_refused(admin_client_) -> None:
    response = admin_client_.post(
        "/admin/tools_app/tooldefinition/add/", form(http_headers=json.dumps({"Authorization": "Bearer abc"}))
    )
    assert response.status_code == 200
    assert "carries a secret" in response.content.decode()
    assert not ToolDefinition.objects.exists()


def test_the_change_page_shows_whether_a_secret_is_set_but_never_its_value(admin_client_, monkeypatch) -> None:
    monkeypatch.setenv("TOOL_SECRET_CRM_TOKEN", "very-secret-value")
    admin_client_.post("/admin/tools_app/tooldefinition/add/", form())
    tool = ToolDefinition.objects.get()
    page = admin_client_.get(f"/admin/tools_app/tooldefinition/{tool.pk}/change/").content.decode()
    assert "TOOL_SECRET_CRM_TOKEN" in page and "very-secret-value" not in page


def test_invocations_are_read_only_with_filters(admin_client_, place_order_tool) -> None:
    from tools_app.services import tool_invoke

    tool_invoke(tool=place_order_tool, arguments={"item": "tea", "quantity": 1}, key="k", scope="s")
    row = ToolInvocation.objects.get()
    listing = admin_client_.get("/admin/tools_app/toolinvocation/?status__exact=succeeded")
    assert listing.status_code == 200 and "place_order" in listing.content.decode()
    assert admin_client_.get("/admin/tools_app/toolinvocation/add/").status_code == 403
    change = admin_client_.post(f"/admin/tools_app/toolinvocation/{row.pk}/change/", {"status": "failed"})
    assert change.status_code == 403
    assert ToolInvocation.objects.get().status == "succeeded"
