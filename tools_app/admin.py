"""Admin for tools: definitions (edited by non-engineers), the ledger and demo effects (read-only)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html_join

from tools_app.builtins import builtin_names
from tools_app.models import (
    DemoCharge,
    DemoOrder,
    DemoWallet,
    ToolDefinition,
    ToolInvocation,
    secret_env_state,
)


class PrettyJSONWidget(forms.Textarea):
    def format_value(self, value: Any) -> Any:
        try:
            return json.dumps(json.loads(value), indent=2, ensure_ascii=False) if value else value
        except (TypeError, ValueError):
            return value


class ToolDefinitionForm(forms.ModelForm):
    class Meta:
        model = ToolDefinition
        fields = (
            "name",
            "description",
            "parameters",
            "kind",
            "enabled",
            "agents",
            "builtin_name",
            "http_url",
            "http_method",
            "http_headers",
            "http_secret_headers",
            "http_signing_secret",
            "timeout_seconds",
            "max_retries",
            "idempotent",
            "run_in_background",
            "requires_confirmation",
            "max_calls_per_session",
        )
        widgets = {
            "parameters": PrettyJSONWidget(attrs={"rows": 14, "cols": 80, "style": "font-family: monospace"}),
            "http_headers": PrettyJSONWidget(attrs={"rows": 4, "cols": 80, "style": "font-family: monospace"}),
            "http_secret_headers": PrettyJSONWidget(attrs={"rows": 4, "cols": 80, "style": "font-family: monospace"}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = ", ".join(builtin_names()) or "none"
        self.fields["builtin_name"].help_text = f"Registered Python function. Available: {names}."


@admin.register(ToolDefinition)
class ToolDefinitionAdmin(admin.ModelAdmin):
    # The JSON Schema and the kind-specific fields are checked by ToolDefinition.clean()
    # (tools_app.schema.schema_errors), which the admin form runs on save.
    form = ToolDefinitionForm
    list_display = ("name", "kind", "enabled", "idempotent", "run_in_background", "timeout_seconds", "max_retries")
    list_filter = ("kind", "enabled", "idempotent", "agents")
    search_fields = ("name", "description")
    filter_horizontal = ("agents",)
    readonly_fields = ("secret_env_status", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "parameters", "kind", "enabled", "agents")}),
        ("Built-in", {"fields": ("builtin_name",)}),
        (
            "HTTP",
            {
                "fields": (
                    "http_url",
                    "http_method",
                    "http_headers",
                    "http_secret_headers",
                    "http_signing_secret",
                    "secret_env_status",
                ),
                "description": "Secrets are never stored here: name the environment variable that holds each "
                "secret header's value (and the signing secret). The worker reads it at call time.",
            },
        ),
        (
            "Reliability and limits",
            {
                "fields": (
                    "timeout_seconds",
                    "max_retries",
                    "idempotent",
                    "run_in_background",
                    "requires_confirmation",
                    "max_calls_per_session",
                )
            },
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    # Where requests go and which secrets ride along: a separate permission, which the
    # "Prompt editors" group does not have (an editor could otherwise point a tool that
    # carries secrets at their own host).
    ENDPOINT_FIELDS = ("kind", "http_url", "http_secret_headers", "http_signing_secret")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.has_perm("tools_app.change_tool_endpoint"):
            fields += self.ENDPOINT_FIELDS
        return fields

    @admin.display(description="Secret variables on this server")
    def secret_env_status(self, obj: ToolDefinition) -> str:
        # Whether each allowed variable is set, never its value; nothing about other names.
        items = [(header, env, secret_env_state(env)) for header, env in obj.secret_variables()]
        if not items:
            return "—"
        return format_html_join("", "<div>{} ← ${}: {}</div>", items)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ToolInvocation)
class ToolInvocationAdmin(ReadOnlyAdmin):
    list_display = ("tool_name", "status", "key", "attempts", "replays", "latency_ms", "created_at")
    list_filter = ("status", "tool_name", "created_at")
    search_fields = ("key", "scope", "tool_name")
    date_hierarchy = "created_at"
    list_select_related = ("tool",)


@admin.register(DemoOrder)
class DemoOrderAdmin(ReadOnlyAdmin):
    list_display = ("pk", "customer", "item", "quantity", "created_at")
    search_fields = ("customer", "item", "idempotency_key")


@admin.register(DemoWallet)
class DemoWalletAdmin(ReadOnlyAdmin):
    list_display = ("owner", "balance", "updated_at")
    search_fields = ("owner",)


@admin.register(DemoCharge)
class DemoChargeAdmin(ReadOnlyAdmin):
    list_display = ("pk", "wallet", "amount", "reason", "created_at")
    search_fields = ("wallet__owner", "idempotency_key")
