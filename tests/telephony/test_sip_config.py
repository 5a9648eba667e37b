"""The SIP service's and the server's rendered configuration (voiceplatform/livekit_dev.py)."""

from __future__ import annotations

import stat

import pytest
import yaml

from voiceplatform import livekit_dev


def test_the_platforms_redis_url_becomes_livekits_redis_section():
    assert livekit_dev.redis_config("unix:///data/redis.sock").section() == {"address": "/data/redis.sock", "db": 3}
    tcp = livekit_dev.redis_config("redis://:s3cret@10.0.0.5:6380/1", db=4)
    assert tcp.section() == {"address": "10.0.0.5:6380", "db": 4, "password": "s3cret"}
    assert livekit_dev.redis_config("redis://localhost").address == "localhost:6379"
    with pytest.raises(ValueError, match="rediss"):
        livekit_dev.redis_config("rediss://example.com:6380")


def test_the_server_gets_redis_and_the_sip_service_a_private_config(tmp_path):
    redis = livekit_dev.redis_config("unix:///data/redis.sock")
    server = livekit_dev.ServerConfig(
        api_key="k", api_secret="s" * 40, webhook_url="http://127.0.0.1:1/hook", port=7990, redis=redis
    )
    body = yaml.safe_load(livekit_dev.render_config(server, tmp_path).read_text())
    assert body["redis"] == {"address": "/data/redis.sock", "db": 3}

    sip = livekit_dev.SipConfig(server=server, sip_port=5070, health_port=8090, nat_ip="203.0.113.9")
    path = livekit_dev.render_sip_config(sip, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the API secret
    body = yaml.safe_load(path.read_text())
    assert body["ws_url"] == "ws://127.0.0.1:7990" and body["api_secret"] == "s" * 40
    assert body["rtp_port"] == "10000-10100"  # a "start-end" string: a mapping is ignored by livekit-sip
    assert (body["sip_port"], body["health_port"], body["nat_1_to_1_ip"]) == (5070, 8090, "203.0.113.9")
    assert body["logging"] == {"level": "info"}
    assert "max_cpu_utilization" not in body  # livekit-sip's own default (0.9)
    relaxed = livekit_dev.SipConfig(server=server, max_cpu_utilization=1.0)
    assert yaml.safe_load(livekit_dev.render_sip_config(relaxed, tmp_path).read_text())["max_cpu_utilization"] == 1.0
    # The secret is never on the command line.
    assert "s" * 40 not in " ".join(livekit_dev.sip_command(tmp_path / "livekit-sip", path))


def test_the_sip_service_does_not_read_a_config_from_the_environment():
    env = livekit_dev.sip_env({"SIP_CONFIG_BODY": "x", "SIP_CONFIG_FILE": "y", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}
