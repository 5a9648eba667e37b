"""Admin for agents and their prompt versions, written for non-engineers.

Prompt versions move only through the services (draft → publish → rollback); the admin
adds buttons, confirmation pages with a diff, and a preview with sample values. Published
and archived versions are read-only everywhere (the model refuses too). The agent page is
here; the prompt versions' are agents_app/prompt_admin.py (list and edit page) and
agents_app/prompt_admin_pages.py (publish, rollback, new draft, diff, preview).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents_app.forms import AgentAdminForm, PhoneLineAdminForm
from agents_app.models import STAGES, Agent, PhoneLine, PromptStatus, PromptVersion
from agents_app.prompt_admin import PromptVersionAdmin, PromptVersionInline
from agents_app.selectors import prompt_published
from agents_app.services import phone_line_delete, phone_line_sync

admin.site.register(PromptVersion, PromptVersionAdmin)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentAdminForm
    list_display = ("name", "slug", "active", "live_prompt", "providers", "updated_at")
    list_filter = ("active", "llm_provider", "stt_provider", "tts_provider")
    search_fields = ("name", "slug", "description")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("prompt_summary", "tool_list", "created_at", "updated_at")
    inlines = (PromptVersionInline,)
    save_on_top = True
    fieldsets = (
        (None, {"fields": ("name", "slug", "description", "active")}),
        (
            "Prompt",
            {
                "fields": ("prompt_summary",),
                "description": "What the agent says and how it behaves lives in versioned prompts.",
            },
        ),
        (
            "Speech recognition (STT): turns the caller's voice into text",
            {"fields": ("stt_provider", "stt_model", "language", "stt_phrases", "stt_fallbacks")},
        ),
        (
            "Language model (LLM): decides what to answer and which tools to call",
            {"fields": ("llm_provider", "llm_model", "llm_fallbacks")},
        ),
        (
            "Voice (TTS): turns the answer into speech",
            {"fields": ("tts_provider", "tts_model", "tts_voice", "tts_fallbacks")},
        ),
        (
            "Conversation",
            {
                "fields": ("allow_interruptions", "text_input", "tool_list"),
                "description": "Tools are attached to agents on each tool's own page (Tools → Tool definitions).",
            },
        ),
        (
            "Turn-taking: when the agent answers, and what stops it",
            {
                "fields": ("turn_detection", "turn_eagerness", "ignore_backchannels", "barge_in_min_speech_ms"),
                "description": "The defaults suit most agents. Semantic end of turn listens to how the caller "
                "speaks and to their last words, so a caller who pauses mid-sentence is not answered halfway.",
            },
        ),
        (
            "Latency budgets (milliseconds)",
            {
                "fields": tuple(f"budget_{key}_ms" for key, _ in STAGES),
                "description": "How long each stage of a turn may take. A turn that goes over a budget is "
                "flagged on the live dashboard. 1000 ms = 1 second; people notice pauses over about 1 second.",
                "classes": ("collapse",),
            },
        ),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Agent]:
        return super().get_queryset(request).prefetch_related("prompt_versions")

    @admin.display(description="Providers (speech in / model / voice)")
    def providers(self, obj: Agent) -> str:
        return " / ".join((obj.stt_provider, obj.llm_provider, obj.tts_provider))

    @admin.display(description="Live prompt")
    def live_prompt(self, obj: Agent) -> str:
        published = next((v for v in obj.prompt_versions.all() if v.status == PromptStatus.PUBLISHED), None)
        if published is None:
            return "none published"
        url = reverse("admin:agents_app_promptversion_change", args=[published.pk])
        return format_html('<a href="{}">v{}</a>', url, published.number)

    @admin.display(description="Prompt")
    def prompt_summary(self, obj: Agent) -> str:
        if not obj.pk:
            return "Save the agent first, then add its first prompt."
        add_url = reverse("admin:agents_app_promptversion_add") + f"?agent={obj.pk}"
        published = prompt_published(agent=obj)
        drafts = obj.prompt_versions.filter(status=PromptStatus.DRAFT).count()
        if published is None:
            return format_html('No published prompt yet. <a href="{}">Write the first draft</a>.', add_url)
        url = reverse("admin:agents_app_promptversion_change", args=[published.pk])
        return format_html(
            'Live: <a href="{}">v{}</a> (published {}). {} draft(s) waiting. <a href="{}">New draft</a>',
            url,
            published.number,
            published.published_at.strftime("%Y-%m-%d %H:%M UTC") if published.published_at else "-",
            drafts,
            add_url,
        )

    @admin.display(description="Tools this agent can use")
    def tool_list(self, obj: Agent) -> str:
        if not obj.pk:
            return "-"
        tools = list(obj.tools.order_by("name").values_list("name", "enabled"))
        if not tools:
            return "No tools."
        return format_html_join(", ", "{}{}", ((name, "" if enabled else " (disabled)") for name, enabled in tools))


@admin.register(PhoneLine)
class PhoneLineAdmin(admin.ModelAdmin):
    """Phone numbers that reach an agent. Saving applies the line to LiveKit's SIP service
    (inbound trunk and dispatch rule) and shows the server's answer when it refuses."""

    form = PhoneLineAdminForm
    list_display = ("number", "agent", "active", "allowed", "digest", "places_calls", "on_server")
    list_filter = ("active", "agent")
    search_fields = ("number",)
    readonly_fields = (
        "on_server",
        "livekit_trunk_id",
        "livekit_rule_id",
        "livekit_outbound_trunk_id",
        "synced_at",
        "sync_error",
    )
    fieldsets = (
        (None, {"fields": ("number", "agent", "active", "transfer_to")}),
        ("Who may call", {"fields": ("allowed_addresses", "auth_username", "auth_password", "clear_auth")}),
        (
            "Placing calls (POST /calls)",
            {"fields": ("outbound_address", "outbound_username", "outbound_password", "clear_outbound_auth")},
        ),
        ("On the LiveKit server", {"fields": readonly_fields}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: PhoneLine | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        # No credentials to remove: no checkbox for it.
        hidden = {
            clear for _, password, clear in PhoneLineAdminForm.SECRETS if obj is None or not getattr(obj, password)
        }
        return [
            (name, {**opts, "fields": tuple(f for f in opts["fields"] if f not in hidden)}) for name, opts in fieldsets
        ]

    @admin.display(description="Places calls", boolean=True)
    def places_calls(self, obj: PhoneLine) -> bool:
        return obj.places_calls

    @admin.display(description="Allowed addresses")
    def allowed(self, obj: PhoneLine) -> str:
        return ", ".join(obj.allowed_addresses) or "-"

    @admin.display(description="Digest auth", boolean=True)
    def digest(self, obj: PhoneLine) -> bool:
        return bool(obj.auth_username)

    @admin.display(description="On the server")
    def on_server(self, obj: PhoneLine) -> str:
        if obj.sync_error:
            return format_html('<span style="color:#b00">not applied: {}</span>', obj.sync_error[:300])
        if not obj.active:
            return "removed (inactive)"
        return f"applied {obj.synced_at:%Y-%m-%d %H:%M}" if obj.synced_at else "not applied yet"

    def save_model(self, request: HttpRequest, obj: PhoneLine, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # After the commit: no row lock is held across the call to the server.
        transaction.on_commit(lambda: self._apply(request, obj))

    def _apply(self, request: HttpRequest, obj: PhoneLine) -> None:
        error = phone_line_sync(line=obj)
        if error:
            messages.error(request, f"Saved, but the LiveKit server did not take phone line {obj.number}: {error}")
        elif obj.active:
            messages.success(request, f"Phone line {obj.number} is live on the SIP service.")

    def delete_model(self, request: HttpRequest, obj: PhoneLine) -> None:
        error = phone_line_delete(line=obj)
        if error:
            messages.error(request, f"Phone line {obj.number} was kept: the LiveKit server did not delete it: {error}")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PhoneLine]) -> None:
        for line in queryset:
            self.delete_model(request, line)
