"""Reads for agents and prompt versions."""

from __future__ import annotations

from agents_app.models import Agent, PromptStatus, PromptVersion


def prompt_published(*, agent: Agent) -> PromptVersion | None:
    return PromptVersion.objects.filter(agent=agent, status=PromptStatus.PUBLISHED).first()


def agent_by_slug(*, slug: str) -> Agent | None:
    return Agent.objects.filter(slug=slug, active=True).first()
