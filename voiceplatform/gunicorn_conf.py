"""gunicorn's settings for the platform: `gunicorn -c python:voiceplatform.gunicorn_conf …`.

Read from the platform's typed settings (voiceplatform/settings.py), so a malformed
variable stops the server with one line, as manage.py prints it. voiceplatform/webserver.py
says why gunicorn with uvicorn workers; docs/configuration.md lists the variables.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
# Web processes check no pooled connection per use (a round trip on every request); see
# DB_HEALTH_CHECKS in voiceplatform/settings.py. Read below, before the workers fork.
os.environ.setdefault("DB_HEALTH_CHECKS", "false")

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from voiceplatform.webserver import GRACEFUL_SHUTDOWN_S

try:
    workers = settings.WEB_PROCESSES
    timeout = settings.WEB_WORKER_TIMEOUT_SECONDS
    max_requests = settings.WEB_MAX_REQUESTS
    loglevel = settings.LOG_LEVEL.lower()
    data_dir = Path(settings.DATA_DIR)
    # gunicorn's own lines (start, workers, signals) through the platform's handler and
    # format (JSON with LOG_FORMAT=json), like every other line of the web server.
    logconfig_dict = {
        **settings.LOGGING,
        "loggers": {
            **settings.LOGGING["loggers"],
            **{
                name: {"handlers": ["console"], "filters": ["sdk_noise"], "propagate": False}
                for name in ("gunicorn.error", "gunicorn.access")
            },
        },
    }
except ImproperlyConfigured as exc:
    print(f"Configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

# Metrics of every worker, not of the one a scrape lands on: each worker writes its samples
# to files in a directory of this server's own (prometheus_client's multiprocess mode, read
# at import, so it is set here in the master before any worker starts), and /metrics adds
# them up (voiceplatform/metrics_server.py). A dead worker's live gauges are dropped.
# Always a directory of this server's own: one inherited from the environment may be an
# agent worker's, whose files must not be wiped here.
METRICS_DIR = data_dir / "prometheus" / f"web-{os.getpid()}"
METRICS_DIR.mkdir(parents=True, exist_ok=True)


def _wipe_metrics() -> None:
    for stale in glob.glob(str(METRICS_DIR / "*.db")):
        os.unlink(stale)


if os.environ.get("VOICE_WEB_METRICS_DIR") != str(METRICS_DIR):  # not on a SIGHUP reload
    _wipe_metrics()  # a previous server's samples
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["VOICE_WEB_METRICS_DIR"] = str(METRICS_DIR)


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    _wipe_metrics()
    with contextlib.suppress(OSError):  # only when empty: never another program's files
        METRICS_DIR.rmdir()


bind = ["127.0.0.1:8000"]  # the command line's --bind replaces it
worker_class = "voiceplatform.webserver.PlatformUvicornWorker"
# Recycled workers do not all restart at once.
max_requests_jitter = max_requests // 10
# uvicorn lets websockets and requests finish for GRACEFUL_SHUTDOWN_S; gunicorn waits a
# little longer before it kills the worker.
graceful_timeout = GRACEFUL_SHUTDOWN_S + 5
keepalive = 5
proc_name = "voiceplatform-web"
# Requests are counted in /metrics; an access line each would flood the demo's output.
accesslog = None
errorlog = "-"
# gunicorn's control socket (gunicornc) is not used; one shared default path would make
# several servers on a machine (tests, benchmarks) contend for it.
control_socket_disable = True
