"""Admin for agents and their prompt versions, written for non-engineers.

Prompt versions move only through the services (draft → publish → rollback); the admin
adds buttons, confirmation pages with a diff, and a preview with sample values. Published
and archived versions are read-only everywhere (the model refuses too).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from agents_app.admin_views import diff_base_for, prompt_diff, prompt_preview, version_label
from agents_app.forms import AgentAdminForm, PromptPreviewForm, PromptVersionAdminForm, RollbackForm
from agents_app.models import STAGES, Agent, PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish, prompt_rollback

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


def _error_text(exc: ValidationError | IntegrityError) -> str:
    if isinstance(exc, IntegrityError):
        # Two publishes of the same agent at once: the one-published-version constraint
        # lets only the first through.
        return "another version of this agent was published at the same moment. Reload the page and try again."
    return " ".join(exc.messages)


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


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin):
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
            messages.error(request, f"Saved, but not published: {_error_text(exc)}")
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

    # --- buttons: publish, rollback, new draft, diff, preview ------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        custom = [
            path("<path:object_id>/publish/", wrap(self.publish_view), name="agents_app_promptversion_publish"),
            path("<path:object_id>/rollback/", wrap(self.rollback_view), name="agents_app_promptversion_rollback"),
            path("<path:object_id>/new-draft/", wrap(self.new_draft_view), name="agents_app_promptversion_new_draft"),
            path("<path:object_id>/diff/", wrap(self.diff_view), name="agents_app_promptversion_diff"),
            path("<path:object_id>/preview/", wrap(self.preview_view), name="agents_app_promptversion_preview"),
        ]
        return custom + super().get_urls()

    def _version_or_404(self, request: HttpRequest, object_id: str) -> PromptVersion:
        obj = self.get_object(request, object_id)
        if obj is None:
            from django.http import Http404

            raise Http404("No such prompt version.")
        return obj

    def _change_url(self, obj: PromptVersion) -> str:
        return reverse("admin:agents_app_promptversion_change", args=[obj.pk])

    def _page(self, request: HttpRequest, template: str, obj: PromptVersion, title: str, **context: Any) -> Any:
        return TemplateResponse(
            request,
            f"admin/agents_app/promptversion/{template}",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "original": obj,
                "title": title,
                "change_url": self._change_url(obj),
                **context,
            },
        )

    def _publish(self, request: HttpRequest, obj: PromptVersion) -> bool:
        previous = prompt_published(agent=obj.agent)
        try:
            prompt_publish(version=obj, user=request.user)
        except (ValidationError, IntegrityError) as exc:
            self.message_user(request, f"Not published: {_error_text(exc)}", messages.ERROR)
            return False
        note = f" v{previous.number} was archived." if previous else ""
        self.message_user(request, f"v{obj.number} is now the live prompt of {obj.agent.name}.{note}", messages.SUCCESS)
        return True

    def publish_view(self, request: HttpRequest, object_id: str) -> Any:
        obj = self._version_or_404(request, object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        if obj.status != PromptStatus.DRAFT:
            self.message_user(
                request,
                f"v{obj.number} is {obj.get_status_display().lower()}; only drafts can be published.",
                messages.ERROR,
            )
            return HttpResponseRedirect(self._change_url(obj))
        if request.method == "POST":
            self._publish(request, obj)
            return HttpResponseRedirect(self._change_url(obj))
        live = prompt_published(agent=obj.agent)
        return self._page(
            request,
            "confirm.html",
            obj,
            f"Publish v{obj.number} of {obj.agent.name}?",
            action="publish",
            button=f"Yes, publish v{obj.number}",
            explanation=(
                f"New calls to {obj.agent.name} will use v{obj.number}. "
                + (f"The live v{live.number} will be archived (you can roll back to it later)." if live else "")
                + " Calls already running keep the version they started with."
            ),
            sections=prompt_diff(old=live, new=obj),
            old_label=version_label(live),
            new_label=version_label(obj),
        )

    def rollback_view(self, request: HttpRequest, object_id: str) -> Any:
        obj = self._version_or_404(request, object_id)
        if not (self.has_add_permission(request) and self.has_change_permission(request, obj)):
            raise PermissionDenied
        live = prompt_published(agent=obj.agent)
        if obj.status == PromptStatus.DRAFT or (live is not None and live.pk == obj.pk):
            why = "it is a draft (publish it instead)" if obj.status == PromptStatus.DRAFT else "it is already live"
            self.message_user(request, f"Cannot roll back to v{obj.number}: {why}.", messages.ERROR)
            return HttpResponseRedirect(self._change_url(obj))
        form = RollbackForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                new = prompt_rollback(to_version=obj, user=request.user, change_note=form.cleaned_data["change_note"])
            except (ValidationError, IntegrityError) as exc:
                self.message_user(request, f"Rollback failed: {_error_text(exc)}", messages.ERROR)
                return HttpResponseRedirect(self._change_url(obj))
            self.message_user(
                request,
                f"Rolled back: v{new.number} (a copy of v{obj.number}) is now the live prompt of {obj.agent.name}.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(self._change_url(new))
        return self._page(
            request,
            "confirm.html",
            obj,
            f"Roll back {obj.agent.name} to v{obj.number}?",
            action="rollback",
            form=form,
            button=f"Yes, roll back to v{obj.number}",
            explanation=(
                f"This publishes a new version with exactly the content of v{obj.number}. "
                + (f"The live v{live.number} will be archived. " if live else "")
                + "Nothing is deleted: every version stays in the history."
            ),
            sections=prompt_diff(old=live, new=obj),
            old_label=version_label(live),
            new_label=version_label(obj),
        )

    def new_draft_view(self, request: HttpRequest, object_id: str) -> Any:
        obj = self._version_or_404(request, object_id)
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            draft = prompt_draft_create(
                agent=obj.agent,
                instructions=obj.instructions,
                greeting=obj.greeting,
                variables=dict(obj.variables or {}),
                author=request.user,
                change_note=f"Draft from v{obj.number}",
                based_on=obj,
            )
            self.message_user(
                request, f"Created draft v{draft.number} from v{obj.number}. Edit it, then publish.", messages.SUCCESS
            )
            return HttpResponseRedirect(self._change_url(draft))
        return self._page(
            request,
            "confirm.html",
            obj,
            f"Start a new draft from v{obj.number}?",
            action="new_draft",
            button="Yes, create the draft",
            explanation=f"A new draft of {obj.agent.name} starts as a copy of v{obj.number}. "
            "Nothing changes for callers until you publish it.",
            sections=None,
        )

    def diff_view(self, request: HttpRequest, object_id: str) -> Any:
        obj = self._version_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        others = PromptVersion.objects.filter(agent_id=obj.agent_id).exclude(pk=obj.pk).order_by("-number")
        against_id = request.GET.get("against", "")
        base = others.filter(pk=against_id).first() if against_id.isdigit() else diff_base_for(obj)
        sections = prompt_diff(old=base, new=obj)
        return self._page(
            request,
            "diff.html",
            obj,
            f"Changes in v{obj.number} of {obj.agent.name}",
            base=base,
            others=others,
            sections=sections,
            old_label=version_label(base),
            new_label=version_label(obj),
            unchanged=not any(s.changed for s in sections),
        )

    def preview_view(self, request: HttpRequest, object_id: str) -> Any:
        obj = self._version_or_404(request, object_id)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        form = PromptPreviewForm(request.GET or None, version=obj)
        preview = prompt_preview(version=obj, values=form.values())
        return self._page(
            request, "preview.html", obj, f"Preview of v{obj.number} of {obj.agent.name}", form=form, preview=preview
        )
