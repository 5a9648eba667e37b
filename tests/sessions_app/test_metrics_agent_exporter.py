"""The agent worker's own /metrics exporter (single process and multiprocess mode)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from sessions_app import metrics
from tests.metrics_text import metric_samples, metric_value
from voiceplatform.metrics_server import start_agent_metrics_server

ROOT = Path(__file__).resolve().parents[2]


def _scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return metric_samples(response.read().decode())


@pytest.fixture
def exporter():
    servers = []

    def start(**kwargs):
        server = start_agent_metrics_server(port=0, host="127.0.0.1", **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_it_is_disabled_when_the_port_setting_is_zero(settings):
    settings.AGENT_METRICS_PORT = 0
    assert start_agent_metrics_server() is None


def test_it_serves_this_process_and_tracks_active_sessions(exporter, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    server = exporter()
    agent = f"a-{uuid.uuid4().hex[:8]}"
    before = metric_value(_scrape(server.url), "voice_active_sessions")

    with metrics.track_active_session(agent=agent):
        during = _scrape(server.url)
    after = _scrape(server.url)

    assert not server.multiprocess
    assert metric_value(during, "voice_active_sessions") == before + 1
    assert metric_value(after, "voice_active_sessions") == before
    assert metric_value(after, "voice_sessions_served_total", agent=agent) == 1


def test_active_sessions_go_back_down_when_the_job_raises():
    before = metrics.ACTIVE_SESSIONS._value.get()
    with pytest.raises(ValueError), metrics.track_active_session(agent="x"):
        raise ValueError("job crashed")
    assert metrics.ACTIVE_SESSIONS._value.get() == before


_JOB = textwrap.dedent(
    """
    import os, sys
    from sessions_app import metrics
    agent, mode = sys.argv[1], sys.argv[2]
    metrics.TURN_STAGE_SECONDS.labels(stage="e2e", agent=agent).observe(0.4)
    metrics.BUDGET_BREACHES.labels(stage="e2e", agent=agent).inc()
    if mode == "crash":
        cm = metrics.track_active_session(agent=agent)
        cm.__enter__()
        os._exit(0)  # dies mid-job, like a SIGKILL: the gauge is never decremented
    with metrics.track_active_session(agent=agent):
        pass
    """
)


def _run_job(path: Path, agent: str, mode: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", _JOB, agent, mode], env=env, check=True, timeout=60, cwd=ROOT)


def test_multiprocess_mode_adds_up_job_processes_and_forgets_dead_ones(exporter, monkeypatch, tmp_path):
    agent = f"a-{uuid.uuid4().hex[:8]}"
    _run_job(tmp_path, agent, "clean")
    _run_job(tmp_path, agent, "crash")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    server = exporter()
    samples = _scrape(server.url)

    assert server.multiprocess
    assert metric_value(samples, "voice_turn_stage_seconds_count", stage="e2e", agent=agent) == 2
    assert metric_value(samples, "voice_budget_breaches_total", stage="e2e", agent=agent) == 2
    assert metric_value(samples, "voice_sessions_served_total", agent=agent) == 2
    assert metric_value(samples, "voice_active_sessions") == 0  # the crashed job's +1 was pruned
    assert not list(tmp_path.glob("gauge_livesum_*.db"))


def test_it_names_the_setting_when_the_port_is_taken(exporter):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(RuntimeError, match="AGENT_METRICS_PORT"):
            start_agent_metrics_server(port=port, host="127.0.0.1")
