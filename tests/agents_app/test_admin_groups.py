"""The "Prompt editors" and "Support staff" groups exist after migrate with fitting permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from agents_app.signals import GROUP_PERMISSIONS, PROMPT_EDITORS, SUPPORT_STAFF, groups_ensure

pytestmark = pytest.mark.django_db


def member(group: str) -> User:
    user = User.objects.create_user(f"u-{group[:4]}", "u@example.com", "pw-123456", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return User.objects.get(pk=user.pk)  # fresh instance: no cached permissions


def test_migrate_creates_both_groups_with_every_listed_permission():
    for name, wanted in GROUP_PERMISSIONS.items():
        group = Group.objects.get(name=name)
        have = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
        assert set(wanted) <= have, set(wanted) - have


def test_prompt_editors_write_agents_prompts_and_tools_but_not_sessions():
    user = member(PROMPT_EDITORS)
    for perm in ("agents_app.change_agent", "agents_app.add_promptversion", "tools_app.change_tooldefinition"):
        assert user.has_perm(perm), perm
    assert not user.has_perm("agents_app.delete_agent")
    assert not user.has_perm("tools_app.delete_tooldefinition")
    assert not user.has_perm("sessions_app.view_voicesession")
    assert not user.has_perm("sessions_app.change_apiclient")


def test_support_staff_only_view_and_step_into_live_calls():
    user = member(SUPPORT_STAFF)
    for perm in ("sessions_app.view_voicesession", "sessions_app.view_turn", "sessions_app.view_sessionevent",
                 "agents_app.view_agent", "agents_app.view_promptversion"):  # fmt: skip
        assert user.has_perm(perm), perm
    # They change no record; beyond viewing they may only listen in and whisper (docs/supervisor.md).
    changing = sorted(p for p in user.get_all_permissions() if not p.split(".")[1].startswith("view_"))
    assert changing == ["sessions_app.listen_voicesession", "sessions_app.whisper_voicesession"]


def test_support_staff_reach_sessions_in_the_admin_but_not_api_clients():
    client = Client()
    client.force_login(member(SUPPORT_STAFF))
    assert client.get(reverse("admin:sessions_app_voicesession_changelist")).status_code == 200
    assert client.get(reverse("admin:sessions_app_apiclient_changelist")).status_code == 403


def test_ensuring_groups_again_keeps_permissions_an_admin_added():
    group = Group.objects.get(name=SUPPORT_STAFF)
    extra = group.permissions.model.objects.get(codename="change_agent")
    group.permissions.add(extra)
    groups_ensure()
    groups_ensure()
    assert Group.objects.filter(name=SUPPORT_STAFF).count() == 1
    assert group.permissions.filter(pk=extra.pk).exists()
