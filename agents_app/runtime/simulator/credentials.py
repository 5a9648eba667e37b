"""The simulator's own API clients, when it shares the platform's database.

Keys are stored hashed, so a key cannot be read back from the DB: the simulator keeps
the keys of its own clients in DATA_DIR/simulator-keys.json (mode 0600) and creates new
clients when the file is missing or a key no longer authenticates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings

from agents_app.models import Agent
from sessions_app.models import ApiClient, ApiScope
from sessions_app.services import api_client_authenticate, api_client_create, hash_api_key

CLIENT_NAME = "simulate_calls"


def key_file() -> Path:
    return Path(settings.DATA_DIR) / "simulator-keys.json"


def _read() -> dict[str, str]:
    try:
        data = json.loads(key_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _write(keys: dict[str, str]) -> None:
    path = key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keys, handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _valid(key: str, scope: str) -> bool:
    client = api_client_authenticate(key=key) if key else None
    return client is not None and client.scope == scope


def _new(scope: str) -> str:
    base = CLIENT_NAME if scope == ApiScope.CLIENT else f"{CLIENT_NAME} (agent)"
    name, n = base, 1
    # A client of that name whose key was lost cannot be reused: take the next free name.
    while ApiClient.objects.filter(name=name).exists():
        n += 1
        name = f"{base} {n}"
    _, key = api_client_create(name=name, scope=scope)
    return key


def simulator_keys() -> tuple[str, str]:
    """(client-scope key, agent-scope key), created on first use and reused afterwards."""
    keys = _read()
    changed = False
    for slot, scope in (("client", ApiScope.CLIENT), ("agent", ApiScope.AGENT)):
        if not _valid(keys.get(slot, ""), scope):
            keys[slot] = _new(scope)
            changed = True
    if changed:
        _write(keys)
    # The simulator's agent key acts for every agent (the tool scenario's forced retry);
    # scenario agents made since the last run are added here.
    agent_client = api_client_authenticate(key=keys["agent"])
    if agent_client is not None:
        ApiClient.objects.get(pk=agent_client.pk).agents.add(*Agent.objects.all())
    return keys["client"], keys["agent"]


def key_known(key: str) -> bool:
    return ApiClient.objects.filter(key_hash=hash_api_key(key)).exists()
