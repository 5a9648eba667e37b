"""Writes for agents and their prompt versions: draft → publish → rollback."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from agents_app.models import PLACEHOLDER_RE, Agent, PromptStatus, PromptVersion


def render_template(text: str, variables: dict[str, Any]) -> str:
    """Replace {{name}} with its value; unknown placeholders are left visible as they are."""

    def substitute(match: Any) -> str:
        name = match.group(1)
        return str(variables[name]) if name in variables else match.group(0)

    return PLACEHOLDER_RE.sub(substitute, text or "")


# A session's metadata fills a prompt variable with at most this many characters.
PROMPT_VALUE_MAX_CHARS = 200


def prompt_values_from_metadata(*, version: PromptVersion, metadata: Any, trusted: bool) -> dict[str, str]:
    """The prompt variables a session's metadata may fill (issue 17, item 7).

    The rendered prompt is the system prompt: whoever fills it speaks with the operator's
    authority. So only variables the prompt declares are filled, only from a trusted
    source (an API client's server; a browser user at /call/ is not one), and each value
    is one short line: no newlines to start new instructions, at most 200 characters.
    """
    if not trusted or not isinstance(metadata, dict):
        return {}
    declared = set((version.variables or {}).keys())
    values: dict[str, str] = {}
    for name, value in metadata.items():
        if name not in declared or isinstance(value, bool) or not isinstance(value, (str, int, float)):
            continue
        text = " ".join(str(value).split())[:PROMPT_VALUE_MAX_CHARS]
        values[name] = text
    return values


def prompt_render(*, version: PromptVersion, values: dict[str, Any] | None = None) -> dict[str, str]:
    """Instructions and greeting with the version's defaults, overridden by `values`."""
    merged = {**(version.variables or {}), **(values or {})}
    return {
        "instructions": render_template(version.instructions, merged),
        "greeting": render_template(version.greeting, merged),
    }


def _next_number(agent: Agent) -> int:
    current = PromptVersion.objects.filter(agent=agent).aggregate(m=Max("number"))["m"]
    return (current or 0) + 1


@transaction.atomic
def prompt_draft_create(
    *,
    agent: Agent,
    instructions: str,
    greeting: str = "",
    variables: dict[str, Any] | None = None,
    author: Any = None,
    change_note: str = "",
    based_on: PromptVersion | None = None,
) -> PromptVersion:
    Agent.objects.select_for_update().filter(pk=agent.pk).first()  # serialize numbering per agent
    version = PromptVersion(
        agent=agent,
        number=_next_number(agent),
        instructions=instructions,
        greeting=greeting,
        variables=variables or {},
        author=author,
        change_note=change_note,
        based_on=based_on,
        status=PromptStatus.DRAFT,
    )
    version.full_clean()
    version.save()
    return version


@transaction.atomic
def prompt_publish(*, version: PromptVersion, user: Any = None) -> PromptVersion:
    """Publish a draft; the previously published version of the agent is archived."""
    version = PromptVersion.objects.select_for_update().get(pk=version.pk)
    if version.status != PromptStatus.DRAFT:
        raise ValidationError(f"Only drafts can be published; v{version.number} is {version.status}.")
    if not version.instructions.strip():
        raise ValidationError("A prompt needs instructions before it can be published.")
    PromptVersion.objects.filter(agent_id=version.agent_id, status=PromptStatus.PUBLISHED).update(
        status=PromptStatus.ARCHIVED, updated_at=timezone.now()
    )
    version.status = PromptStatus.PUBLISHED
    version.published_at = timezone.now()
    version.save(update_fields=["status", "published_at", "updated_at"])
    return version


@transaction.atomic
def prompt_rollback(*, to_version: PromptVersion, user: Any = None, change_note: str = "") -> PromptVersion:
    """Publish a new version whose content is a copy of an earlier one."""
    new = prompt_draft_create(
        agent=to_version.agent,
        instructions=to_version.instructions,
        greeting=to_version.greeting,
        variables=dict(to_version.variables or {}),
        author=user,
        change_note=change_note or f"Rollback to v{to_version.number}",
        based_on=to_version,
    )
    return prompt_publish(version=new, user=user)
