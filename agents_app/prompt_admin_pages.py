"""The prompt version's own pages in the admin: publish, roll back, start a new draft
from it, diff it and preview it, each a confirmation or read-only page.

Publishing and rolling back go through the services (agents_app/services.py); the diff
and the preview are computed by agents_app/admin_views.py. PromptVersionAdmin
(agents_app/prompt_admin.py) builds on this class.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from agents_app.admin_views import diff_base_for, prompt_diff, prompt_preview, version_label
from agents_app.forms import PromptPreviewForm, RollbackForm
from agents_app.models import PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_draft_create, prompt_publish, prompt_rollback


def error_text(exc: ValidationError | IntegrityError) -> str:
    if isinstance(exc, IntegrityError):
        # Two publishes of the same agent at once: the one-published-version constraint
        # lets only the first through.
        return "another version of this agent was published at the same moment. Reload the page and try again."
    return " ".join(exc.messages)


class PromptVersionPagesAdmin(admin.ModelAdmin):
    """The publish, rollback, new-draft, diff and preview pages of a prompt version."""

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
            self.message_user(request, f"Not published: {error_text(exc)}", messages.ERROR)
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
                self.message_user(request, f"Rollback failed: {error_text(exc)}", messages.ERROR)
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
