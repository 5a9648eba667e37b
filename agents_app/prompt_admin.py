"""Prompt versions in the admin: the list, the edit page (drafts only; published and
archived versions are read-only), publishing on save, and the list actions. Their own
pages (publish, rollback, new draft, diff, preview) are agents_app/prompt_admin_pages.py.

Prompt versions move only through the services (draft → publish → rollback).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents_app.forms import PromptVersionAdminForm
from agents_app.models import PromptStatus, PromptVersion
from agents_app.prompt_admin_pages import PromptVersionPagesAdmin, error_text
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish

STATUS_COLOURS = {
    PromptStatus.DRAFT: ("#8a5a00", "#fff4d6"),
    PromptStatus.PUBLISHED: ("#0b6b2f", "#dcf5e3"),
    PromptStatus.ARCHIVED: ("#555", "#ececec"),
}


def status_badge(status: str, label: str) -> str:
    colour, background = STATUS_COLOURS.get(status, ("#333", "#eee"))
    return format_html(
        '<span style="color:{};background:{};padding:2px 8px;border-radius:10px;font-weight:600">{}</span>',
        colour,
        background,
        label,
    )


class PromptVersionInline(admin.TabularInline):
    """The agent page lists its versions; editing happens on the version's own page."""

    model = PromptVersion
    fk_name = "agent"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("version", "status_label", "change_note", "author", "updated_at", "published_at")
    readonly_fields = fields
    ordering = ("-number",)
    verbose_name = "prompt version"
    verbose_name_plural = "Prompt versions (open one to edit, publish, diff or preview it)"

    @admin.display(description="Version")
    def version(self, obj: PromptVersion) -> str:
        return f"v{obj.number}"

    @admin.display(description="Status")
    def status_label(self, obj: PromptVersion) -> str:
        return status_badge(obj.status, obj.get_status_display())

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PromptVersionAdmin(PromptVersionPagesAdmin):
    form = PromptVersionAdminForm
    change_form_template = "admin/agents_app/promptversion/change_form.html"
    list_display = ("version", "agent", "status_label", "change_note", "last_change", "page_links")
    list_display_links = ("version",)
    list_filter = ("status", "agent")
    search_fields = ("agent__name", "agent__slug", "change_note", "instructions", "greeting")
    list_select_related = ("agent", "author")
    ordering = ("agent__name", "-number")
    actions = ("publish_selected", "delete_selected_drafts")

    INFO_FIELDS = ("agent", "number", "status", "author", "based_on", "created_at", "updated_at", "published_at")
    CONTENT_FIELDS = ("instructions", "greeting", "variables", "change_note")

    # --- list -----------------------------------------------------------------------

    @admin.display(description="Version", ordering="number")
    def version(self, obj: PromptVersion) -> str:
        return f"v{obj.number}"

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: PromptVersion) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Last change", ordering="updated_at")
    def last_change(self, obj: PromptVersion) -> str:
        who = obj.author.get_username() if obj.author_id else "system"
        return f"{who}, {obj.updated_at:%Y-%m-%d %H:%M}"

    @admin.display(description="")
    def page_links(self, obj: PromptVersion) -> str:
        return format_html(
            '<a href="{}">Diff</a> · <a href="{}">Preview</a>',
            reverse("admin:agents_app_promptversion_diff", args=[obj.pk]),
            reverse("admin:agents_app_promptversion_preview", args=[obj.pk]),
        )

    @admin.display(description="Placeholders used")
    def placeholder_list(self, obj: PromptVersion) -> str:
        names = obj.placeholders()
        if not names:
            return "none"
        defaults = obj.variables or {}
        return format_html_join(
            ", ", "<code>{{{{{}}}}}</code>{}", ((n, "" if n in defaults else " (no default)") for n in names)
        )

    # --- form layout --------------------------------------------------------------------

    def _is_draft(self, obj: PromptVersion | None) -> bool:
        return obj is None or obj.status == PromptStatus.DRAFT

    def get_fieldsets(self, request: HttpRequest, obj: PromptVersion | None = None) -> Any:
        content = ("instructions", "greeting", "variables", "placeholder_list", "change_note")
        if obj is None:
            return ((None, {"fields": ("agent", *content)}),)
        info = ("agent", "number", "status", "author", "based_on", "published_at", "created_at", "updated_at")
        return (
            ("Prompt", {"fields": content}),
            ("About this version", {"fields": info}),
        )

    def get_readonly_fields(self, request: HttpRequest, obj: PromptVersion | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("placeholder_list",)
        if obj.status != PromptStatus.DRAFT:
            return (*self.CONTENT_FIELDS, *self.INFO_FIELDS, "placeholder_list")
        return (*self.INFO_FIELDS, "placeholder_list")

    def has_delete_permission(self, request: HttpRequest, obj: PromptVersion | None = None) -> bool:
        # Published and archived versions are history (and may be pinned by calls).
        if obj is not None and obj.status != PromptStatus.DRAFT:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # replaced by delete_selected_drafts
        if not self.has_change_permission(request):
            actions.pop("publish_selected", None)
        if not self.has_delete_permission(request):
            actions.pop("delete_selected_drafts", None)
        return actions

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, object_id) if object_id else None
        if obj is not None and not self._is_draft(obj):
            if request.method == "POST":
                messages.error(
                    request,
                    f"v{obj.number} is {obj.get_status_display().lower()} and cannot be edited; nothing was saved. "
                    "Use “New draft from this version” to change it.",
                )
                return HttpResponseRedirect(request.path)
            extra_context = {
                **(extra_context or {}),
                "show_save": False,
                "show_save_and_continue": False,
                "show_save_and_add_another": False,
            }
        if obj is not None:
            published = prompt_published(agent=obj.agent)
            extra_context = {
                **(extra_context or {}),
                "is_draft": self._is_draft(obj),
                "is_live": published is not None and published.pk == obj.pk,
                "live_version": published,
                "can_publish": self._is_draft(obj) and self.has_change_permission(request, obj),
                "can_branch": self.has_add_permission(request),
                "can_edit": self.has_change_permission(request, obj),
                "title": (
                    f"Edit draft v{obj.number} of {obj.agent.name}"
                    if self._is_draft(obj)
                    else f"v{obj.number} of {obj.agent.name} (read-only)"
                ),
            }
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: PromptVersion, form: Any, change: bool) -> None:
        if change:
            if obj.author_id is None:
                obj.author = request.user
            obj.save()
            return
        # New versions are numbered by the service, under a lock per agent.
        created = prompt_draft_create(
            agent=obj.agent,
            instructions=obj.instructions,
            greeting=obj.greeting,
            variables=obj.variables,
            author=request.user,
            change_note=obj.change_note,
        )
        obj.pk, obj.number, obj.author, obj.status = created.pk, created.number, created.author, created.status
        obj._state.adding = False
        obj._state.db = created._state.db

    def _after_save(self, request: HttpRequest, obj: PromptVersion, response: HttpResponse) -> HttpResponse:
        if "_publish" not in request.POST:
            return response
        try:
            prompt_publish(version=obj, user=request.user)
        except (ValidationError, IntegrityError) as exc:
            messages.error(request, f"Saved, but not published: {error_text(exc)}")
        else:
            messages.success(request, f"v{obj.number} is now the live prompt of {obj.agent.name}.")
        return HttpResponseRedirect(reverse("admin:agents_app_promptversion_change", args=[obj.pk]))

    def response_add(self, request: HttpRequest, obj: PromptVersion, post_url_continue: str | None = None) -> Any:
        return self._after_save(request, obj, super().response_add(request, obj, post_url_continue))

    def response_change(self, request: HttpRequest, obj: PromptVersion) -> Any:
        return self._after_save(request, obj, super().response_change(request, obj))

    # --- list actions -------------------------------------------------------------------

    @admin.action(description="Publish the selected draft")
    def publish_selected(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        versions = list(queryset)
        if len(versions) != 1:
            self.message_user(request, "Select exactly one draft to publish.", messages.ERROR)
            return
        self._publish(request, versions[0])

    @admin.action(description="Delete the selected drafts")
    def delete_selected_drafts(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        kept = queryset.exclude(status=PromptStatus.DRAFT).count()
        if kept:
            self.message_user(
                request,
                f"Nothing was deleted: {kept} of the selected versions are published or archived, "
                "and those are kept as history. Select only drafts.",
                messages.ERROR,
            )
            return
        count = queryset.count()
        for version in queryset:
            self.log_deletion(request, version, str(version))
        queryset.delete()
        self.message_user(request, f"Deleted {count} draft(s).", messages.SUCCESS)
