"""Admin for API clients and (read-only) voice sessions, turns, events and webhooks.

Sessions are history written by the platform: support staff look, nobody edits. API keys
are stored hashed; the admin shows only the prefix, and the key once, when it is created.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html

from sessions_app.models import ApiClient, LiveKitWebhookEvent, SessionEvent, Turn, VoiceSession
from sessions_app.services import api_client_create


def pretty_json(value: Any) -> str:
    if value in (None, "", {}, []):
        return "-"
    return format_html(
        '<pre style="white-space:pre-wrap;margin:0;font-size:12px">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


class ReadOnlyAdminMixin:
    """View-only: no add, change or delete for anyone, superusers included."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "scope", "key_prefix_shown", "active", "created_at", "last_used_at")
    list_filter = ("scope", "active")
    search_fields = ("name", "key_prefix")
    readonly_fields = ("key_prefix_shown", "created_at", "last_used_at")

    filter_horizontal = ("agents",)

    def get_fields(self, request: HttpRequest, obj: ApiClient | None = None) -> tuple[str, ...]:
        # key_hash and webhook_secret never appear; the secret is shown once like the key.
        # `agents`: what an agent-scope key may act for (tools_app/api.py).
        # `call_destinations`: the numbers a client key may have the platform call (POST /calls).
        if obj is None:
            return ("name", "scope", "webhook_url", "active", "agents", "call_destinations")
        return (
            "name",
            "scope",
            "key_prefix_shown",
            "active",
            "webhook_url",
            "agents",
            "call_destinations",
            "created_at",
            "last_used_at",
        )

    @admin.display(description="Key starts with")
    def key_prefix_shown(self, obj: ApiClient) -> str:
        return f"{obj.key_prefix}…" if obj.key_prefix else "-"

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        if change:
            new_secret = ""
            if obj.webhook_url and not obj.webhook_secret:
                # Reports are signed: a client that gains a webhook URL needs a secret.
                obj.webhook_secret = new_secret = secrets.token_urlsafe(32)
            super().save_model(request, obj, form, change)
            if new_secret:
                messages.warning(
                    request,
                    f"Webhook signing secret of “{obj.name}”: {new_secret} — copy it now; it is not shown again.",
                )
            return
        created, key = api_client_create(name=obj.name, scope=obj.scope, webhook_url=obj.webhook_url)
        ApiClient.objects.filter(pk=created.pk).update(active=obj.active, call_destinations=obj.call_destinations)
        obj.pk = created.pk
        obj._state.adding = False
        obj._state.db = created._state.db  # save_related() then stores `agents` on this row
        message = (
            f"The API key of “{created.name}” is: {key} — copy it now. It is stored only as a hash "
            "and will not be shown again; if it is lost, create a new client."
        )
        if created.webhook_secret:
            message += f" Webhook signing secret: {created.webhook_secret}"
        messages.warning(request, message)


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("index", "user_text", "generated_text", "heard_text", "interrupted", "e2e_ms", "ttfa_ms", "breaches")
    readonly_fields = fields
    ordering = ("index",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SessionEventInline(admin.TabularInline):
    model = SessionEvent
    extra = 0
    can_delete = False
    fields = ("seq", "type", "payload_shown", "created_at")
    readonly_fields = fields
    ordering = ("seq",)

    @admin.display(description="Payload")
    def payload_shown(self, obj: SessionEvent) -> str:
        return pretty_json(obj.payload)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(VoiceSession)
class VoiceSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "agent", "prompt_version_number", "caller_id", "state", "turn_count",
        "interrupt_count", "reconnect_count", "last_e2e_ms", "created_at",
    )  # fmt: skip
    list_filter = ("state", "channel", "agent", "created_at")
    search_fields = ("id", "caller_id", "room_name", "end_reason")
    list_select_related = ("agent", "prompt_version", "api_client")
    date_hierarchy = "created_at"
    inlines = (TurnInline, SessionEventInline)
    fieldsets = (
        (None, {"fields": ("id", "dashboard_link", "state", "end_reason", "agent", "prompt_version", "caller_id")}),
        (
            "Counters",
            {"fields": ("turn_count", "interrupt_count", "reconnect_count", "last_e2e_ms", "last_seq")},
        ),
        ("Post-call report", {"fields": ("report_shown", "report_delivered_at")}),
        (
            "Technical details",
            {
                "fields": ("room", "channel", "phone_line", "api_client", "user", "metadata_shown", "agent_job_id",
                           "last_heartbeat_at", "created_at", "started_at", "ended_at", "updated_at"),
                "classes": ("collapse",),
            },
        ),
    )  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    @admin.display(description="Prompt", ordering="prompt_version__number")
    def prompt_version_number(self, obj: VoiceSession) -> str:
        return f"v{obj.prompt_version.number}" if obj.prompt_version_id else "-"

    @admin.display(description="Live view")
    def dashboard_link(self, obj: VoiceSession) -> str:
        return format_html('<a href="/dashboard/sessions/{}/">Open on the dashboard</a>', obj.pk)

    @admin.display(description="Report")
    def report_shown(self, obj: VoiceSession) -> str:
        if not obj.report:
            return "No report yet (it is written shortly after the call ends)."
        return pretty_json(obj.report)

    @admin.display(description="Room")
    def room(self, obj: VoiceSession) -> str:
        return obj.room_shown  # a phone call's room name carries the caller's number: masked

    @admin.display(description="Metadata")
    def metadata_shown(self, obj: VoiceSession) -> str:
        return pretty_json(obj.metadata)


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("session", "index", "user_text", "interrupted", "e2e_ms", "ttfa_ms", "created_at")
    list_filter = ("interrupted", "session__agent", "created_at")
    search_fields = ("session__id", "user_text", "generated_text")
    list_select_related = ("session",)
    readonly_fields = (
        "session", "index", "started_at", "created_at", "user_text", "generated_text", "heard_text",
        "interrupted", "interrupt_source", "eou_ms", "stt_ms", "llm_ttft_ms", "tool_ms", "tts_ttfb_ms",
        "ttfa_ms", "e2e_ms", "breaches", "tool_calls", "error",
    )  # fmt: skip
    fields = readonly_fields


@admin.register(SessionEvent)
class SessionEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("session", "seq", "type", "created_at")
    list_filter = ("type", "created_at")
    search_fields = ("session__id", "type")
    list_select_related = ("session",)
    fields = ("session", "seq", "type", "payload_shown", "created_at")
    readonly_fields = fields

    @admin.display(description="Payload")
    def payload_shown(self, obj: SessionEvent) -> str:
        return pretty_json(obj.payload)


@admin.register(LiveKitWebhookEvent)
class LiveKitWebhookEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("event", "room_name", "event_id", "received_at", "processed_at")
    list_filter = ("event", "received_at")
    search_fields = ("event_id", "room_name")
    fields = ("event_id", "event", "room_name", "payload_shown", "received_at", "processed_at")
    readonly_fields = fields

    @admin.display(description="Payload")
    def payload_shown(self, obj: LiveKitWebhookEvent) -> str:
        return pretty_json(obj.payload)
