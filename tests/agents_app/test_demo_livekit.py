"""`make demo` and the LiveKit server: which transport, the rendered config, restarts, stop order.

The real server is exercised by the livekit tier (tests/livekit/test_demo_server.py);
these check the demo's choices and files without one.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml
from django.core.management.base import CommandError
from django.test import override_settings

from agents_app.runtime.demo.supervisor import RestartBudget, Supervisor
from agents_app.runtime.demo.transport import transport_plan
from voiceplatform import livekit_dev


@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch) -> Path:
    binary = tmp_path / "livekit-server"
    binary.write_text("#!/bin/sh\necho 'livekit-server version 1.13.5'\n")
    binary.chmod(0o755)
    monkeypatch.setenv("LIVEKIT_SERVER_BIN", str(binary))
    return binary


@override_settings(LIVEKIT_URL="")
def test_with_a_server_binary_the_demo_plans_the_real_server(fake_server, settings, tmp_path) -> None:
    settings.DATA_DIR = tmp_path
    plan = transport_plan("auto", webhook_url="http://127.0.0.1:8000/api/v1/livekit/webhook")
    assert plan.kind == "embedded" and plan.binary == fake_server
    assert plan.url == "ws://127.0.0.1:7880"
    secret = (tmp_path / "livekit" / "api-secret").read_text().strip()
    assert plan.server.api_secret == secret and len(secret) >= 32
    assert stat.S_IMODE((tmp_path / "livekit" / "api-secret").stat().st_mode) == 0o600
    again = transport_plan("auto", webhook_url="http://127.0.0.1:8000/x")
    assert again.server.api_secret == secret, "the secret is kept between runs"


@override_settings(LIVEKIT_URL="")
def test_without_a_binary_the_demo_keeps_the_local_transport_or_says_how_to_get_one(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LIVEKIT_SERVER_BIN", str(tmp_path / "missing"))
    assert transport_plan("auto", webhook_url="x").kind == "local"
    with pytest.raises(CommandError, match="make livekit-server"):
        transport_plan("livekit", webhook_url="x")


def test_local_is_never_the_real_server_and_livekit_url_wins(fake_server) -> None:
    with override_settings(LIVEKIT_URL=""):
        assert transport_plan("local", webhook_url="x").kind == "local"
    with override_settings(LIVEKIT_URL="wss://lk.example.com"):
        plan = transport_plan("auto", webhook_url="x")
        assert plan.kind == "external" and plan.url == "wss://lk.example.com"
        with pytest.raises(CommandError, match="LIVEKIT_URL is set"):
            transport_plan("local", webhook_url="x")


def test_the_rendered_config_keeps_the_secret_out_and_points_webhooks_at_the_platform(tmp_path) -> None:
    config = livekit_dev.ServerConfig(
        api_key="k1",
        api_secret="s" * 40,
        webhook_url="http://127.0.0.1:8123/api/v1/livekit/webhook",
        port=7999,
        udp_port=7998,
        node_ip="10.213.9.1",
        extra_webhook_urls=("http://127.0.0.1:9/tap",),
        departure_timeout=5,
    )
    path = livekit_dev.render_config(config, tmp_path)
    body = yaml.safe_load(path.read_text())

    assert "s" * 40 not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert body["webhook"] == {"api_key": "k1", "urls": [config.webhook_url, "http://127.0.0.1:9/tap"]}
    assert body["port"] == 7999 and body["rtc"]["udp_port"] == 7998 and body["rtc"]["node_ip"] == "10.213.9.1"
    assert body["bind_addresses"] == ["127.0.0.1"] and body["rtc"]["tcp_port"] == 0
    assert body["room"]["departure_timeout"] == 5 and body["room"]["empty_timeout"] == 120
    env = livekit_dev.server_env(config, {"NODE_IP": "1.2.3.4", "REDIS_HOST": "x", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "LIVEKIT_KEYS": f"k1: {'s' * 40}"}, "the server reads these by itself"


def test_the_projects_config_is_loopback_only_with_webhooks_and_chosen_timeouts() -> None:
    body = yaml.safe_load(livekit_dev.CONFIG_TEMPLATE.read_text())
    assert body["bind_addresses"] == ["127.0.0.1"]
    assert body["rtc"]["use_external_ip"] is False and body["rtc"]["tcp_port"] == 0
    assert body["webhook"]["urls"][0].endswith(livekit_dev.WEBHOOK_PATH)
    assert "keys" not in body, "the key pair comes from LIVEKIT_KEYS"
    assert body["room"]["departure_timeout"] == 30 and body["room"]["empty_timeout"] == 120
    assert body["agents"]["target_load"] == 1.0, "the worker reports running calls / AGENT_MAX_JOBS"


def test_a_crash_loop_stops_the_restarts() -> None:
    budget = RestartBudget(limit=3, window_s=600)
    assert [budget.allow() for _ in range(4)] == [True, True, True, False]


def test_the_livekit_server_is_stopped_after_the_others(tmp_path: Path) -> None:
    """It waits for its participants to leave, so it goes after the agent and the callers."""
    supervisor = Supervisor(io.StringIO(), colour=False)
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(tmp_path)!r} + '/' + sys.argv[1], 'w').write(repr(time.monotonic()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', sys.argv[1], 'now', flush=True)\n"
        "time.sleep(60)\n"
    )
    for name in ("livekit", "agent"):
        supervisor.start(name, [sys.executable, "-c", script, name], dict(os.environ))
    deadline = time.monotonic() + 20
    while supervisor.out.getvalue().count("| ready ") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    supervisor.stop_all(last=("livekit",))
    assert float((tmp_path / "agent").read_text()) < float((tmp_path / "livekit").read_text())


@override_settings(LIVEKIT_URL="", REDIS_URL="unix:///tmp/vp-test-redis.sock")
def test_with_the_sip_service_built_the_demo_plans_phone_calls(fake_server, settings, tmp_path, monkeypatch) -> None:
    from agents_app.runtime.demo.transport import phone_lines

    settings.DATA_DIR = tmp_path
    sip = tmp_path / "livekit-sip"
    sip.write_text("#!/bin/sh\n")
    sip.chmod(0o755)
    monkeypatch.setenv("LIVEKIT_SIP_BIN", str(sip))
    monkeypatch.setenv("LIVEKIT_NODE_IP", "10.1.2.3")
    plan = transport_plan("auto", webhook_url="x")
    assert plan.sip is not None and plan.sip_binary == sip
    assert plan.server.redis == plan.sip.redis and plan.sip.redis.address == "/tmp/vp-test-redis.sock"
    assert plan.sip.nat_ip == "10.1.2.3" and plan.sip.server is plan.server

    monkeypatch.setenv("LIVEKIT_SIP_BIN", str(tmp_path / "missing"))
    plan = transport_plan("auto", webhook_url="x")
    assert plan.sip is None and plan.server.redis is None  # no SIP service: the server needs no Redis
    assert phone_lines(plan) == ["  Phone:      phone calls are off: `make livekit-sip` builds LiveKit's SIP service"]


@pytest.mark.django_db
def test_the_banner_names_each_active_phone_line(fake_server, agent, settings, tmp_path, monkeypatch) -> None:
    from agents_app.models import PhoneLine
    from agents_app.runtime.demo.transport import phone_lines

    settings.DATA_DIR = tmp_path
    sip = tmp_path / "livekit-sip"
    sip.write_text("#!/bin/sh\n")
    sip.chmod(0o755)
    monkeypatch.setenv("LIVEKIT_SIP_BIN", str(sip))
    monkeypatch.delenv("LIVEKIT_NODE_IP", raising=False)
    PhoneLine.objects.create(agent=agent, number="+15550100", allowed_addresses=["127.0.0.1"])
    PhoneLine.objects.create(agent=agent, number="+15550199", allowed_addresses=["127.0.0.1"], active=False)
    with override_settings(LIVEKIT_URL="", REDIS_URL="redis://127.0.0.1:6379/1"):
        plan = transport_plan("auto", webhook_url="x")
    assert phone_lines(plan) == ["  Phone:      sip:+15550100@127.0.0.1:5060  (support; any SIP softphone here)"]
