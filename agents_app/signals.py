"""The two built-in groups, created (or completed) after every `migrate`.

A post_migrate hook rather than a data migration: permissions themselves are created by
django.contrib.auth's own post_migrate hook, so they exist only after migrations ran. The
hook only adds missing permissions and never removes any, so permissions an admin granted
by hand survive the next deploy.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import DEFAULT_DB_ALIAS

PROMPT_EDITORS = "Prompt editors"
SUPPORT_STAFF = "Support staff"

# Editors write agents, prompt versions and tool definitions. They may delete drafts only:
# the prompt admin refuses to delete published or archived versions for everyone.
GROUP_PERMISSIONS: dict[str, tuple[str, ...]] = {
    PROMPT_EDITORS: (
        "agents_app.add_agent",
        "agents_app.change_agent",
        "agents_app.view_agent",
        "agents_app.add_promptversion",
        "agents_app.change_promptversion",
        "agents_app.view_promptversion",
        "agents_app.delete_promptversion",
        # Phone numbers routed to agents (the admin applies them to LiveKit's SIP service).
        "agents_app.add_phoneline",
        "agents_app.change_phoneline",
        "agents_app.view_phoneline",
        "agents_app.delete_phoneline",
        "tools_app.add_tooldefinition",
        "tools_app.change_tooldefinition",
        "tools_app.view_tooldefinition",
    ),
    # Support watches calls (admin and live dashboard) and reads; it changes no record, but
    # may listen in to a live call and whisper to its agent.
    SUPPORT_STAFF: (
        "sessions_app.view_voicesession",
        # Step into live calls: listen in (hidden, subscribe-only) and whisper to the agent.
        "sessions_app.listen_voicesession",
        "sessions_app.whisper_voicesession",
        "sessions_app.view_turn",
        "sessions_app.view_sessionevent",
        "sessions_app.view_livekitwebhookevent",
        "agents_app.view_agent",
        "agents_app.view_promptversion",
        "agents_app.view_phoneline",
        "tools_app.view_tooldefinition",
        "tools_app.view_toolinvocation",
    ),
}


def groups_ensure(*, using: str = DEFAULT_DB_ALIAS) -> dict[str, Group]:
    """Create the groups if missing and add any of their permissions that exist yet."""
    groups: dict[str, Group] = {}
    for name, codenames in GROUP_PERMISSIONS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        wanted = []
        for dotted in codenames:
            app_label, codename = dotted.split(".", 1)
            wanted.extend(Permission.objects.using(using).filter(content_type__app_label=app_label, codename=codename))
        group.permissions.add(*wanted)
        groups[name] = group
    return groups


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    # Sent once per app; cheap and idempotent, so the last call sees every permission.
    groups_ensure(using=using)
