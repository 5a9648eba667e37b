"""How a web process is started, in one place: the demo, the Procfile, the browser tests and
bench/token_api.py all serve `voiceplatform.asgi:application` the same way.

uvicorn with WEB_PROCESSES worker processes (default 2, one per core of the reference
machine), each running HTTP requests on WEB_THREADS threads (voiceplatform/asgi.py) and
websockets on its event loop. One process cannot use a second core (the GIL), and daphne
has no worker processes: on 2 cores one daphne created 98 sessions a second where
2 uvicorn workers created 178 (docs/api.md has the measurements).
"""

from __future__ import annotations

import sys

from django.conf import settings

ASGI_APP = "voiceplatform.asgi:application"


def web_server_command(*, host: str, port: int, processes: int | None = None, python: str | None = None) -> list[str]:
    return [
        python or sys.executable,
        "-m",
        "uvicorn",
        ASGI_APP,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(processes or settings.WEB_PROCESSES),
        "--lifespan",
        "off",  # Channels' router has no lifespan protocol
        "--no-access-log",  # requests are counted in /metrics; an access line each would flood the demo
        "--timeout-graceful-shutdown",
        "5",  # dashboards keep websockets open; do not wait for them forever on Ctrl-C
    ]
