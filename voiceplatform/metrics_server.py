"""The agent worker's own Prometheus exporter (`/metrics` on AGENT_METRICS_PORT).

Voice turn metrics are observed in the process that records the turn, which is the agent
worker, not the web process. So every agent worker serves its own `/metrics` and
Prometheus scrapes it next to the web process (see deploy/prometheus.yml).

Two layouts, chosen by the environment, with one call from `manage.py runagent`:

- In-process jobs (the local transport, or livekit-agents' THREAD executor): the
  exporter serves this process's default registry.
- Job subprocesses (livekit-agents' default PROCESS executor): set
  `PROMETHEUS_MULTIPROC_DIR` to an empty, per-worker directory *before* the worker
  starts (prometheus_client reads it at import). Each job process then writes its
  samples to files there and the exporter adds them up with prometheus_client's
  `MultiProcessCollector`. Gauges in "live" modes of processes that died without
  cleaning up (SIGKILL, OOM) are pruned at each scrape, so `voice_active_sessions`
  never counts a dead job.

The LiveKit worker (agents_app/runtime/worker/livekit_worker.py) sets the directory per worker
before its job processes start and never passes livekit its own `prometheus_port`: one
exporter a worker.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def process_is_multiprocess_mode() -> bool:
    """Whether this process's metric values are written to PROMETHEUS_MULTIPROC_DIR files."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def prune_dead_processes(path: str) -> list[int]:
    """Drop live-mode gauge files of processes that no longer exist; return their pids."""
    dead: list[int] = []
    for filename in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(os.path.basename(filename))
        if not match:
            continue
        pid = int(match.group(1))
        if not _pid_alive(pid):
            mark_process_dead(pid, path)
            dead.append(pid)
    return dead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LiveMultiProcessCollector(Collector):
    """MultiProcessCollector that first forgets live gauges of dead job processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._inner = MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Metric]:
        try:
            prune_dead_processes(self.path)
        except OSError:  # a scrape must not fail on a file race with a dying process
            logger.debug("could not prune dead metric files", exc_info=True)
        return self._inner.collect()


def metrics_registry(*, jobs_only: bool = False) -> CollectorRegistry:
    """The registry a `/metrics` endpoint serves: every process's files when
    PROMETHEUS_MULTIPROC_DIR is set (the agent worker's job processes; the web server's
    gunicorn workers, voiceplatform/gunicorn_conf.py), else this process's own.

    `jobs_only`: this process observes nothing itself (the LiveKit worker's main process;
    its job processes do), so it does not matter that it is not in multiprocess mode.
    """
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    os.makedirs(path, exist_ok=True)
    if not jobs_only and not process_is_multiprocess_mode():
        logger.warning(
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; "
            "metrics observed in this process itself will not be exported (job processes still are)"
        )
    registry = CollectorRegistry()
    registry.register(LiveMultiProcessCollector(path))
    return registry


@dataclass
class AgentMetricsServer:
    host: str
    port: int
    multiprocess: bool
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_agent_metrics_server(
    *, port: int | None = None, host: str | None = None, jobs_only: bool = False
) -> AgentMetricsServer | None:
    """Serve `/metrics` for this agent worker; None when AGENT_METRICS_PORT is 0.

    `port=0` here (tests) binds a free port; the setting's 0 means "disabled".
    Raises RuntimeError with the setting's name when the port is taken, so two workers
    on one host fail loudly instead of one silently not being scraped.
    """
    from django.conf import settings

    if port is None:
        port = int(settings.AGENT_METRICS_PORT)
        if port == 0:
            logger.info("agent metrics exporter disabled (AGENT_METRICS_PORT=0)")
            return None
    host = host or getattr(settings, "AGENT_METRICS_HOST", "127.0.0.1")
    registry = metrics_registry(jobs_only=jobs_only)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise RuntimeError(
            f"agent metrics exporter cannot listen on {host}:{port} ({exc}); "
            "give each agent worker its own AGENT_METRICS_PORT, or 0 to disable it"
        ) from exc
    bound = AgentMetricsServer(
        host=host,
        port=server.server_port,
        multiprocess=registry is not REGISTRY,
        _server=server,
        _thread=thread,
    )
    logger.info("agent metrics at %s (%s)", bound.url, "multiprocess" if bound.multiprocess else "single process")
    return bound
