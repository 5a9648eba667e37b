"""`manage.py runagent [dev|start]`: the agent worker process.

With LIVEKIT_URL set it runs a livekit-agents worker that LiveKit dispatches jobs to
explicitly, by agent name (settings.LIVEKIT_AGENT_NAME): agents_app.runtime.worker.livekit_worker. Without it (local mode) it runs
the local agent host, `agents_app.runtime.worker.local_server.serve()`, which accepts callers on
LOCAL_AGENT_HOST:LOCAL_AGENT_PORT and runs the same entrypoint in-process.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the voice agent worker (LiveKit when LIVEKIT_URL is set, else the local agent host)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "mode",
            nargs="?",
            default="start",
            choices=["dev", "start"],
            help="dev: development defaults and hot reload (LiveKit mode); start: production.",
        )

    def handle(self, *args: Any, mode: str = "start", **options: Any) -> None:
        if settings.LIVEKIT_LOCAL_MODE:
            self._serve_local()
        else:
            self._run_livekit_worker(mode)

    def _serve_local(self) -> None:
        try:
            from agents_app.runtime.worker.local_server import serve
        except ImportError as exc:
            raise CommandError(
                "LIVEKIT_URL is not set, so runagent runs the local agent host, but "
                f"agents_app.runtime.worker.local_server is not available ({exc}). Set LIVEKIT_URL to run "
                "a LiveKit worker instead."
            ) from exc
        self.stdout.write(
            f"LIVEKIT_URL is unset: serving local calls on {settings.LOCAL_AGENT_HOST}:{settings.LOCAL_AGENT_PORT}"
        )
        result = serve()
        if inspect.iscoroutine(result):
            asyncio.run(result)

    def _run_livekit_worker(self, mode: str) -> None:
        from agents_app.runtime.worker.livekit_worker import run_worker

        run_worker(dev=mode == "dev")
