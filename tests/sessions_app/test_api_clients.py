"""`manage.py create_api_client`: the key alone on the last line, stored only hashed."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from sessions_app.models import ApiClient, ApiScope
from sessions_app.services import hash_api_key

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_client", *args, stdout=out)
    return out.getvalue()


def test_it_prints_a_working_key_alone_on_the_last_line_and_stores_only_its_hash(agent):
    key = _run("mobile-app").strip().splitlines()[-1]
    client = ApiClient.objects.get(name="mobile-app")
    assert client.scope == ApiScope.CLIENT
    assert client.key_hash == hash_api_key(key) and key not in (client.key_hash, client.key_prefix)
    response = Client().post(
        "/api/v1/sessions",
        data=json.dumps({"agent": "support", "user_id": "u"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 201


def test_it_creates_agent_scope_keys_that_cannot_open_sessions(agent):
    key = _run("tool-runner", "--scope", "agent").strip().splitlines()[-1]
    assert ApiClient.objects.get(name="tool-runner").scope == ApiScope.AGENT
    response = Client().get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 403


def test_it_binds_an_agent_key_to_the_agents_named(agent):
    _run("tool-runner", "--scope", "agent", "--agent", "support")
    assert list(ApiClient.objects.get(name="tool-runner").agents.values_list("slug", flat=True)) == ["support"]


def test_it_refuses_an_unknown_agent_or_agents_on_a_client_key(agent):
    with pytest.raises(CommandError, match="No agent with slug nope"):
        _run("tool-runner", "--scope", "agent", "--agent", "nope")
    with pytest.raises(CommandError, match="agent-scope"):
        _run("mobile", "--agent", "support")
    assert not ApiClient.objects.exists()


def test_it_refuses_a_duplicate_name_clearly():
    _run("dup")
    with pytest.raises(CommandError, match="already exists"):
        _run("dup")
    assert ApiClient.objects.filter(name="dup").count() == 1


def test_it_refuses_an_unknown_scope():
    with pytest.raises(CommandError):
        _run("x", "--scope", "admin")
    assert not ApiClient.objects.exists()
