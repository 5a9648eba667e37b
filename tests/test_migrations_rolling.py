"""Migrations stay compatible with the release before them (a rolling deploy).

`migrate` runs while the previous release's web, Celery and agent processes still write
(issue 20: several machines, restarted one at a time). Their INSERTs omit any column they
do not know, so every column a migration adds must be nullable or carry a database default
(`db_default`), or those writes fail (a turn lost). The columns added before this rule are
listed; the list may only shrink.
"""

from __future__ import annotations

from django.db import migrations
from django.db.migrations.loader import MigrationLoader
from django.db.models import NOT_PROVIDED

OURS = ("agents_app", "sessions_app", "tools_app")
BEFORE_THE_RULE = {
    ("agents_app", "0003_agent_text_input", "agent", "text_input"),
    ("sessions_app", "0002_agent_presence", "voicesession", "agent_dispatch_attempts"),
    ("sessions_app", "0002_agent_presence", "voicesession", "agent_dispatch_count"),
    ("sessions_app", "0002_agent_presence", "voicesession", "agent_identity"),
    ("sessions_app", "0002_agent_presence", "voicesession", "agent_status"),
    ("sessions_app", "0002_agent_presence", "voicesession", "caller_connection"),
    ("tools_app", "0002_toolinvocation_claim_token_and_more", "toolinvocation", "claim_token"),
    ("tools_app", "0004_tool_identity_signing_and_cap", "tooldefinition", "http_signing_secret"),
    ("tools_app", "0005_tool_requires_confirmation", "tooldefinition", "requires_confirmation"),
}


def added_required_columns() -> set[tuple[str, str, str, str]]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    found = set()
    for (app, name), migration in loader.disk_migrations.items():
        if app not in OURS or name.startswith("0001_"):
            continue  # a new table has no writers from an older release
        for op in migration.operations:
            if isinstance(op, migrations.AddField) and not op.field.many_to_many:
                if not op.field.null and op.field.db_default is NOT_PROVIDED:
                    found.add((app, name, op.model_name, op.name))
    return found


def test_every_added_column_is_nullable_or_has_a_database_default() -> None:
    assert added_required_columns() - BEFORE_THE_RULE == set()


def test_the_rule_sees_the_columns_it_lists() -> None:
    assert BEFORE_THE_RULE <= added_required_columns()  # a rename would hide a new one
