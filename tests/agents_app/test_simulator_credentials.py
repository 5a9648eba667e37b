"""The simulator's own API clients: created once, keys kept in a 0600 file, recreated if lost."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from django.test import override_settings

from agents_app.runtime.simulator.credentials import key_file, simulator_keys
from sessions_app.models import ApiClient, ApiScope
from sessions_app.services import api_client_authenticate


@pytest.fixture
def data_dir(tmp_path: Path):
    with override_settings(DATA_DIR=tmp_path):
        yield tmp_path


@pytest.mark.django_db
def test_it_creates_a_client_and_an_agent_key_and_stores_them_privately(data_dir: Path) -> None:
    client_key, agent_key = simulator_keys()
    assert api_client_authenticate(key=client_key).scope == ApiScope.CLIENT
    assert api_client_authenticate(key=agent_key).scope == ApiScope.AGENT
    path = key_file()
    assert path.parent == data_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert client_key in path.read_text()


@pytest.mark.django_db
def test_its_agent_key_serves_every_agent_including_new_ones(data_dir: Path) -> None:
    from agents_app.models import Agent

    Agent.objects.create(slug="first", name="First")
    simulator_keys()
    Agent.objects.create(slug="second", name="Second")
    _, agent_key = simulator_keys()
    served = api_client_authenticate(key=agent_key).agents.values_list("slug", flat=True)
    assert sorted(served) == ["first", "second"]


@pytest.mark.django_db
def test_it_reuses_its_clients_on_the_next_run(data_dir: Path) -> None:
    first = simulator_keys()
    count = ApiClient.objects.count()
    assert simulator_keys() == first
    assert ApiClient.objects.count() == count


@pytest.mark.django_db
def test_it_recreates_clients_when_the_key_file_is_lost(data_dir: Path) -> None:
    old_client, _ = simulator_keys()
    key_file().unlink()
    new_client, new_agent = simulator_keys()
    assert new_client != old_client
    assert api_client_authenticate(key=new_client) is not None and api_client_authenticate(key=new_agent) is not None
    assert ApiClient.objects.filter(name__startswith="simulate_calls").count() == 4


@pytest.mark.django_db
def test_it_replaces_a_deactivated_client(data_dir: Path) -> None:
    old_client, old_agent = simulator_keys()
    ApiClient.objects.filter(scope=ApiScope.CLIENT).update(active=False)
    new_client, agent = simulator_keys()
    assert new_client != old_client and agent == old_agent
