"""`manage.py demo` (what `make demo` runs): the whole platform plus simulated traffic.

It migrates, seeds the demo data, then starts and supervises, each in its own process
group with prefixed coloured output:

- web:     gunicorn + uvicorn workers (voiceplatform.webserver) on 127.0.0.1:8000 (admin, API, dashboard, websockets, /metrics)
- celery:  a Celery worker with beat (post-call reports, reaper, slow tools)
- livekit: a LiveKit server (deploy/livekit/livekit.yaml) when LIVEKIT_URL is unset and a
           livekit-server binary is found (`make livekit-server`); see docs/livekit.md
- agent:   `manage.py runagent` (a LiveKit worker, or the local agent host without a server)
- llm:     `manage.py runllm` (the `local` LLM provider: a small real model, llama.cpp) when installed
- traffic: a steady trickle of `simulate_calls`, one call at a time across the scenarios

Ctrl-C or SIGTERM stops everything: SIGTERM to each process group, SIGKILL to what is
left after a grace period, so no process outlives the demo. The embedded Redis is
stopped too when this run started it. Environment variables (DATABASE_URL, REDIS_URL,
LIVEKIT_URL, OPENAI_API_KEY, …) are passed through, so the same command uses them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agents_app.runtime.demo.run import DEFAULT_TRAFFIC, run_demo


class Command(BaseCommand):
    help = "Run the whole platform with simulated calls (what `make demo` runs). Ctrl-C stops everything."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Web server address (default %(default)s).")
        parser.add_argument("--port", type=int, default=8000, help="Web server port (default %(default)s).")
        parser.add_argument("--no-traffic", action="store_true", help="Do not run simulated calls.")
        parser.add_argument(
            "--no-agent",
            action="store_true",
            help="Start no agent worker: run `manage.py runagent` yourself, as one or several workers on this or "
            "other hosts (docs/deploy.md). Implies no doctor run.",
        )
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (default: run until Ctrl-C)."
        )
        parser.add_argument(
            "--scenarios",
            default=",".join(DEFAULT_TRAFFIC),
            help="Scenarios the traffic cycles through (default %(default)s).",
        )
        parser.add_argument(
            "--pause", type=float, default=3.0, help="Seconds between simulated calls (default %(default)s)."
        )
        parser.add_argument(
            "--transport",
            choices=["auto", "livekit", "local"],
            default="auto",
            help="auto (default): a real LiveKit server when LIVEKIT_URL is set or a livekit-server binary is "
            "found (`make livekit-server`), else the local transport; livekit: require a server; local: never.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run_demo(options, stdout=self.stdout)
