"""Writes for agents and their prompt versions: draft → publish → rollback."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from agents_app.models import PLACEHOLDER_RE, Agent, PhoneLine, PromptStatus, PromptVersion


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


# --- phone lines (issue 29, docs/telephony.md) ----------------------------------------------


def _sip_spec(line: PhoneLine) -> Any:
    from sessions_app.livekit_server import SipLineSpec

    return SipLineSpec(
        line_id=line.pk,
        number=line.number,
        allowed_addresses=tuple(a.strip() for a in line.allowed_addresses),
        auth_username=line.auth_username,
        auth_password=line.auth_password,
        room_prefix=line.room_prefix,
        trunk_id=line.livekit_trunk_id,
        rule_id=line.livekit_rule_id,
        outbound_address=line.outbound_address,
        outbound_username=line.outbound_username,
        outbound_password=line.outbound_password,
        outbound_trunk_id=line.livekit_outbound_trunk_id,
    )


def _line_ids(line: PhoneLine) -> dict[str, str]:
    """What the server holds for `line`, as sip_line_remove takes it."""
    return {
        "trunk_id": line.livekit_trunk_id,
        "rule_id": line.livekit_rule_id,
        "outbound_trunk_id": line.livekit_outbound_trunk_id,
    }


def _record_sync(line: PhoneLine, *, error: str, ids: Any = None) -> None:
    """Keep the server's answer on the line: the ids it now holds (`ids`, a SipLineIds; None
    keeps the known ones) and its refusal ("" when it accepted)."""
    if ids is not None:
        line.livekit_trunk_id, line.livekit_rule_id, line.livekit_outbound_trunk_id = ids
    line.sync_error = error
    line.synced_at = timezone.now() if not error else line.synced_at
    PhoneLine.objects.filter(pk=line.pk).update(
        livekit_trunk_id=line.livekit_trunk_id,
        livekit_rule_id=line.livekit_rule_id,
        livekit_outbound_trunk_id=line.livekit_outbound_trunk_id,
        sync_error=error,
        synced_at=line.synced_at,
    )


def phone_line_sync(*, line: PhoneLine) -> str:
    """Make the LiveKit server hold what `line` says (after the admin saved it).

    An active line gets an inbound trunk and a dispatch rule (created, or replaced in
    place); an inactive one has both deleted. Returns "" or the server's answer when it
    refused, which is also kept on the line (`sync_error`) and shown in the admin: the
    row is saved either way, and saving again (or `manage.py phone_lines --sync`) retries.
    """
    from django.conf import settings

    from sessions_app import livekit_server

    if not settings.LIVEKIT_URL:
        error = "no LiveKit server (LIVEKIT_URL is unset): phone lines need LiveKit's SIP service"
        _record_sync(line, error=error)
        return error
    try:
        if line.active:
            ids = livekit_server.sip_line_apply(_sip_spec(line))
        else:
            livekit_server.sip_line_remove(**_line_ids(line))
            ids = livekit_server.SipLineIds("", "", "")
    except livekit_server.LiveKitServerError as exc:
        _record_sync(line, error=str(exc)[:2000])
        return str(exc)
    _record_sync(line, ids=ids, error="")
    return ""


def phone_line_delete(*, line: PhoneLine) -> str:
    """Delete the line's trunk and rule from the server, then the row. Returns "" or the
    server's answer; a server that refuses keeps the row (nothing is left dangling)."""
    from django.conf import settings

    from sessions_app import livekit_server

    if settings.LIVEKIT_URL and any(_line_ids(line).values()):
        try:
            livekit_server.sip_line_remove(**_line_ids(line))
        except livekit_server.LiveKitServerError as exc:
            _record_sync(line, error=str(exc)[:2000])
            return str(exc)
    line.delete()
    return ""


def phone_lines_sync_all() -> dict[str, list[str]]:
    """Reconcile the server with the database: every active line applied, and trunks or
    rules that carry the platform's mark but belong to no active line deleted (a line
    deleted while the server was down, a server's Redis kept across databases).

    Returns {"synced": [numbers], "failed": ["number: answer"], "removed": [ids]}.
    """
    from sessions_app import livekit_server

    report: dict[str, list[str]] = {"synced": [], "failed": [], "removed": []}
    keep: set[str] = set()
    for line in PhoneLine.objects.select_related("agent").order_by("number"):
        error = phone_line_sync(line=line)
        if error:
            report["failed"].append(f"{line.number}: {error}")
        elif line.active:
            report["synced"].append(line.number)
        keep.update(i for i in _line_ids(line).values() if i)
    if report["failed"]:
        return report  # never delete on a partial view
    trunks, rules = livekit_server.sip_lines_list()
    for rule in rules:
        if livekit_server.marked_line_id(rule.metadata) is not None and rule.sip_dispatch_rule_id not in keep:
            livekit_server.sip_line_remove(trunk_id="", rule_id=rule.sip_dispatch_rule_id)
            report["removed"].append(rule.sip_dispatch_rule_id)
    for trunk in trunks:
        if livekit_server.marked_line_id(trunk.metadata) is not None and trunk.sip_trunk_id not in keep:
            livekit_server.sip_line_remove(trunk_id=trunk.sip_trunk_id, rule_id="")
            report["removed"].append(trunk.sip_trunk_id)
    return report
