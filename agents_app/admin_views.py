"""Read-only helpers behind the prompt admin's Diff and Preview pages.

Kept out of admin.py so the page logic (which text is compared, how it is rendered) can
be tested without the admin machinery.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from agents_app.models import PLACEHOLDER_RE, PromptStatus, PromptVersion
from agents_app.selectors import prompt_published
from agents_app.services import prompt_render

DIFF_FIELDS: tuple[tuple[str, str], ...] = (
    ("instructions", "Instructions"),
    ("greeting", "Greeting"),
    ("variables", "Default variable values"),
)


@dataclass
class DiffSection:
    field: str
    label: str
    changed: bool
    added: int
    removed: int
    table: SafeString
    unified: str


def _lines(version: PromptVersion | None, field: str) -> list[str]:
    if version is None:
        return []
    value = getattr(version, field)
    if field == "variables":
        # Sorted, one name per line: a changed value shows as one changed line.
        return [f"{name} = {json.dumps(value[name], ensure_ascii=False)}" for name in sorted(value or {})]
    return (value or "").splitlines()


def version_label(version: PromptVersion | None) -> str:
    if version is None:
        return "(nothing yet)"
    return f"v{version.number} ({version.get_status_display().lower()})"


def diff_base_for(version: PromptVersion) -> PromptVersion | None:
    """What a version is compared with by default: the published version, or for the
    published version itself the version it replaced (so the page is never empty)."""
    published = prompt_published(agent=version.agent)
    if published is not None and published.pk != version.pk:
        return published
    if version.based_on_id and version.based_on_id != version.pk:
        return version.based_on
    return (
        PromptVersion.objects.filter(agent_id=version.agent_id, number__lt=version.number).order_by("-number").first()
    )


def prompt_diff(*, old: PromptVersion | None, new: PromptVersion) -> list[DiffSection]:
    """Side-by-side HTML tables (difflib) and unified text, one section per field."""
    sections: list[DiffSection] = []
    old_desc, new_desc = version_label(old), version_label(new)
    for field, label in DIFF_FIELDS:
        before, after = _lines(old, field), _lines(new, field)
        unified = list(difflib.unified_diff(before, after, old_desc, new_desc, lineterm="", n=3))
        added = sum(1 for line in unified if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in unified if line.startswith("-") and not line.startswith("---"))
        # HtmlDiff escapes the text itself. It writes spaces as &nbsp;, which would stop
        # long prompt lines from wrapping at word boundaries, so they become spaces again
        # (the cells are white-space: pre-wrap).
        table = difflib.HtmlDiff(tabsize=4).make_table(
            before, after, old_desc, new_desc, context=len(before) + len(after) > 60, numlines=4
        )
        table = table.replace("&nbsp;", " ")
        sections.append(
            DiffSection(
                field=field,
                label=label,
                changed=before != after,
                added=added,
                removed=removed,
                table=mark_safe(table),  # difflib escaped every line
                unified="\n".join(unified),
            )
        )
    return sections


def highlight_placeholders(text: str) -> SafeString:
    """Escape `text` and mark the {{placeholders}} that no value filled in."""
    parts: list[str] = []
    last = 0
    for match in PLACEHOLDER_RE.finditer(text):
        parts.append(escape(text[last : match.start()]))
        parts.append(f'<mark class="vp-missing" title="No value given">{escape(match.group(0))}</mark>')
        last = match.end()
    parts.append(escape(text[last:]))
    return mark_safe("".join(parts))  # every piece escaped above


def prompt_preview(*, version: PromptVersion, values: dict[str, Any]) -> dict[str, Any]:
    rendered = prompt_render(version=version, values=values)
    missing = sorted({name for text in rendered.values() for name in PLACEHOLDER_RE.findall(text)})
    return {
        "instructions": highlight_placeholders(rendered["instructions"]),
        "greeting": highlight_placeholders(rendered["greeting"]),
        "missing": missing,
        "is_published": version.status == PromptStatus.PUBLISHED,
    }
