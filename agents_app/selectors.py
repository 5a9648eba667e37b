"""Reads for agents and prompt versions."""

from __future__ import annotations

from django.db import connection
from django.db.models import QuerySet

from agents_app.models import Agent, PromptStatus, PromptVersion
from voiceplatform.hotcache import hot_get, hot_set


def prompt_published(*, agent: Agent) -> PromptVersion | None:
    return PromptVersion.objects.filter(agent=agent, status=PromptStatus.PUBLISHED).first()


def agent_by_slug(*, slug: str) -> Agent | None:
    return Agent.objects.filter(slug=slug, active=True).first()


def published_version_for_call(*, slug: str) -> PromptVersion | None:
    """The published prompt version of an active agent, its agent attached (slug and name).

    The session-creation hot path: one hand-written SELECT through `Manager.raw()`,
    which skips the ORM's query compiler (about 0.4 instead of 3 ms of CPU on the 2-core
    bench machine; docs/api.md). Only id, number and status of the version and id,
    slug and name of the agent are loaded; reading another field loads it. Kept for
    HOT_CACHE_SECONDS per process (voiceplatform/hotcache.py).
    """
    cache_key = f"published:{slug}"
    cached = hot_get(cache_key)
    if cached is not None:
        return cached
    qn = connection.ops.quote_name
    version_table, agent_table = qn(PromptVersion._meta.db_table), qn(Agent._meta.db_table)
    rows = PromptVersion.objects.raw(
        f"SELECT v.id, v.agent_id, v.number, v.status, a.slug AS agent_slug, a.name AS agent_name "
        f"FROM {version_table} v JOIN {agent_table} a ON a.id = v.agent_id "
        f"WHERE a.slug = %s AND a.active AND v.status = %s",
        [slug, PromptStatus.PUBLISHED],
    )
    for version in rows:  # at most one: a partial unique constraint allows one published per agent
        version.agent = Agent.from_db(
            connection.alias, ["id", "slug", "name"], [version.agent_id, version.agent_slug, version.agent_name]
        )
        hot_set(cache_key, version)
        return version
    return None


def agents_active() -> QuerySet[Agent]:
    return Agent.objects.filter(active=True).order_by("slug")


def agents_active_without_published_prompt() -> QuerySet[Agent]:
    """Active agents that every call would refuse (`manage.py doctor`)."""
    return agents_active().exclude(prompt_versions__status=PromptStatus.PUBLISHED)
