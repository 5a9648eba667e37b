"""A missing or malformed environment variable stops the process at start, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
SETUP = (
    "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
)

# Every variable a case may set; removed first so the developer's or CI's values never leak in.
VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_TOKEN_TTL_SECONDS",
    "DJANGO_DEBUG", "DJANGO_SECRET_KEY", "VOICE_DEV_DEFAULTS", "LOG_LEVEL", "LOG_FORMAT", "OPENAI_BASE_URL",
    "LOCAL_AGENT_PORT", "AGENT_HEARTBEAT_SECONDS", "STT_PROCESS_POOL_SIZE", "OPENAI_ENDPOINTS", "AGENT_MAX_JOBS",
)  # fmt: skip


def start(tmp_path: Path, code: str = SETUP, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    # A Redis URL that is parsed but never contacted: settings must not start the embedded one.
    clean.update({"DJANGO_SETTINGS_MODULE": "voiceplatform.settings", "DATA_DIR": str(tmp_path)})
    clean.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")
    clean.setdefault("VOICE_DEV_DEFAULTS", "true")
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://"}, "DATABASE_URL"),
        ({"REDIS_URL": "foo"}, "REDIS_URL"),
        ({"LIVEKIT_TOKEN_TTL_SECONDS": "9999"}, "LIVEKIT_TOKEN_TTL_SECONDS"),
        ({"LIVEKIT_TOKEN_TTL_SECONDS": "ten"}, "LIVEKIT_TOKEN_TTL_SECONDS"),
        ({"LIVEKIT_URL": "wss://lk.example.com"}, "LIVEKIT_API_KEY"),
        ({"LIVEKIT_URL": "ftp://lk.example.com"}, "LIVEKIT_URL"),
        ({"OPENAI_BASE_URL": "localhost:8080"}, "OPENAI_BASE_URL"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"VOICE_DEV_DEFAULTS": "false"}, "DJANGO_SECRET_KEY"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOCAL_AGENT_PORT": "70000"}, "LOCAL_AGENT_PORT"),
        ({"AGENT_HEARTBEAT_SECONDS": "0.01"}, "AGENT_HEARTBEAT_SECONDS"),
        ({"OPENAI_ENDPOINTS": "{not json"}, "OPENAI_ENDPOINTS"),
        ({"OPENAI_ENDPOINTS": '{"backup": "ftp://x"}'}, "OPENAI_ENDPOINTS"),
        ({"OPENAI_ENDPOINTS": '{"Bad Name": "https://x/v1"}'}, "OPENAI_ENDPOINTS"),
        ({"AGENT_MAX_JOBS": "-1"}, "AGENT_MAX_JOBS"),
    ],
)
def test_it_stops_at_start_and_names_the_bad_variable(tmp_path, env, variable):
    result = start(tmp_path, **env)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert variable in last_line, result.stderr[-2000:]


def test_manage_py_check_refuses_a_malformed_variable(tmp_path):
    result = start(tmp_path, code="import runpy, sys; sys.argv=['manage.py', 'check']; runpy.run_path('manage.py', run_name='__main__')",
                   LIVEKIT_TOKEN_TTL_SECONDS="9999")  # fmt: skip
    assert result.returncode != 0
    assert "LIVEKIT_TOKEN_TTL_SECONDS must be <= 900" in result.stderr


def test_it_uses_postgresql_and_the_given_redis_when_both_are_set(tmp_path):
    code = SETUP + "; print(settings.REDIS_URL, settings.EMBEDDED_REDIS, settings.CELERY_BROKER_URL)"
    result = start(tmp_path, code, DATABASE_URL="postgres://u@127.0.0.1:5432/x", REDIS_URL="redis://127.0.0.1:6379/3")
    assert result.returncode == 0, result.stderr
    assert "django.db.backends.postgresql" in result.stdout
    assert "redis://127.0.0.1:6379/3 False redis://127.0.0.1:6379/3" in result.stdout


def test_it_defaults_to_sqlite_under_the_data_directory(tmp_path):
    code = SETUP + "; print(settings.DATABASES['default']['NAME'])"
    result = start(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert "sqlite3" in result.stdout
    assert str(tmp_path / "db.sqlite3") in result.stdout


def test_an_sqlite_database_url_waits_for_locks_like_the_default_file(tmp_path):
    """Agent jobs, web and Celery write one file: a deferred transaction that reads and then
    writes fails at once with "database is locked" (an agent job's claim did in the tier)."""
    code = SETUP + "; o = settings.DATABASES['default']['OPTIONS']; print(o['transaction_mode'], o['timeout'])"
    for env in ({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"}, {}):
        result = start(tmp_path, code, **env)
        assert result.returncode == 0, result.stderr
        assert "IMMEDIATE 20" in result.stdout, (env, result.stdout)


def test_livekit_settings_are_read_when_livekit_url_is_set(tmp_path):
    code = SETUP + "; print(settings.LIVEKIT_URL, settings.LIVEKIT_API_KEY, settings.LIVEKIT_LOCAL_MODE)"
    result = start(tmp_path, code, LIVEKIT_URL="wss://lk.example.com", LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s")
    assert result.returncode == 0, result.stderr
    assert "wss://lk.example.com k False" in result.stdout


def test_env_example_lists_every_variable_settings_reads():
    """`.env.example` must stay complete: every env_*("NAME") in settings.py is documented."""
    import re

    source = (BASE_DIR / "voiceplatform" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z][A-Z0-9_]*)"', source))
    read |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z][A-Z0-9_]*)"', source))
    example = (BASE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.M))
    assert read, "no variables found: the pattern no longer matches settings.py"
    assert read - documented == set(), f"missing from .env.example: {sorted(read - documented)}"


def test_the_values_in_env_example_start_cleanly(tmp_path):
    import re

    example = (BASE_DIR / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, flags=re.M))
    values.pop("DATA_DIR", None)
    values["DJANGO_SECRET_KEY"] = "what-an-operator-fills-in-0123456789abcdef"  # the example leaves it empty
    values["REDIS_URL"] = values.get("REDIS_URL") or "redis://127.0.0.1:1/0"  # keep the embedded Redis off
    result = start(tmp_path, **values)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sqlite3" in result.stdout


def test_without_dev_defaults_a_missing_secret_key_stops_every_process(tmp_path):
    """Production must not run with the published development key (issue 17, item 9)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOICE_DEV_DEFAULTS", "DJANGO_SECRET_KEY", "DJANGO_DEBUG")}
    env.update({"DJANGO_SETTINGS_MODULE": "voiceplatform.settings", "DATA_DIR": str(tmp_path)})
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "DJANGO_SECRET_KEY must be set" in result.stderr


def test_seed_demo_refuses_to_create_the_published_logins_without_dev_defaults(tmp_path):
    result = start(
        tmp_path,
        code="import django; django.setup(); from django.core.management import call_command; call_command('seed_demo')",
        VOICE_DEV_DEFAULTS="false",
        DJANGO_SECRET_KEY="a-real-secret-key-for-this-test-0123456789",
    )
    assert result.returncode != 0 and "published password" in result.stderr


def test_the_local_transport_secret_is_random_per_deployment(tmp_path):
    """Issue 17, item 13: nobody can mint local-transport tokens with a published secret."""
    code = "import django; django.setup(); from django.conf import settings; print(settings.LIVEKIT_API_SECRET)"
    first = start(tmp_path / "a", code=code).stdout.strip()
    again = start(tmp_path / "a", code=code).stdout.strip()
    other = start(tmp_path / "b", code=code).stdout.strip()
    assert len(first) >= 32 and first == again != other
    assert first != "local-transport-development-secret-0123456789"
    assert oct((tmp_path / "a" / "livekit" / "api-secret").stat().st_mode & 0o777) == "0o600"


def test_a_production_configuration_passes_check_deploy(tmp_path):
    """Issue 17, item 11: `manage.py check --deploy` is clean without development defaults."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "voiceplatform.settings",
            "DATA_DIR": str(tmp_path),
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "VOICE_DEV_DEFAULTS": "false",
            "DJANGO_SECRET_KEY": "pT1x-production-like-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            "DJANGO_ALLOWED_HOSTS": "voice.example.com",
        }
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
