"""`manage.py simulate_calls`: synthetic callers through the real voice pipeline.

Each call opens a session through the HTTP API of the running platform, speaks Piper
speech into the transport the API pointed it to, listens to the agent and acts as its
scenario says. Progress goes to stdout, one line per call event; with `--json` the last
line of stdout is the JSON summary. The exit status is 1 when any call failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents_app.runtime.simulator import scenarios


class Command(BaseCommand):
    help = "Run simulated voice calls against the running platform (see docs/simulator.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--calls", type=int, default=1, help="How many calls (default 1).")
        parser.add_argument("--concurrency", type=int, default=1, help="Calls at the same time (default 1).")
        parser.add_argument(
            "--scenario",
            action="append",
            default=None,
            help=f"Scenario name or YAML path; repeat or comma-separate to cycle through several, 'all' for every "
            f"shipped one ({', '.join(scenarios.available())}). Default: basic.",
        )
        parser.add_argument("--json", action="store_true", help="Print the JSON summary as the last line of stdout.")
        parser.add_argument(
            "--record", metavar="DIR", help="Write a stereo WAV (caller left, agent right) and a transcript per call."
        )
        parser.add_argument(
            "--base-url", default="http://127.0.0.1:8000", help="The platform's web server (default %(default)s)."
        )
        parser.add_argument(
            "--api-key",
            default="",
            help="A client-scope API key. Without it the simulator creates or reuses its own client "
            "(it must share the platform's database).",
        )
        parser.add_argument(
            "--agent-api-key",
            default="",
            help="An agent-scope key for the tool scenario's forced retry (default: the simulator's own).",
        )
        parser.add_argument(
            "--local-agent",
            choices=["url", "inprocess"],
            default="url",
            help="url (default): connect to the url the API returns (runagent's local agent host, or LiveKit); "
            "inprocess: run the agent jobs inside this process (no runagent needed).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["calls"] < 1:
            raise CommandError("--calls must be at least 1")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        names: list[str] = []
        for value in options["scenario"] or ["basic"]:
            names.extend(n.strip() for n in value.split(",") if n.strip())
        if names == ["all"]:
            names = scenarios.available()
        try:
            loaded = [scenarios.load(name) for name in names]
        except scenarios.ScenarioError as exc:
            raise CommandError(str(exc)) from exc

        from agents_app.runtime.simulator.runner import RunOptions, run_calls

        api_key, agent_key, shared_db = self._keys(options)
        if options["local_agent"] == "inprocess":
            from agents_app.runtime.worker.entrypoint import prewarm as setup
            from agents_app.runtime.worker.local import prewarm

            self._line("loading the agent's models for in-process jobs…")
            prewarm(setup)
        run_options = RunOptions(
            scenarios=loaded,
            calls=options["calls"],
            concurrency=options["concurrency"],
            base_url=options["base_url"],
            api_key=api_key,
            agent_api_key=agent_key,
            local_agent=options["local_agent"],
            record_dir=Path(options["record"]) if options["record"] else None,
            shared_db=shared_db,
        )
        transport = (
            "in-process agent jobs"
            if options["local_agent"] == "inprocess"
            else "the url the API returns (local:// the local agent host, ws(s):// a LiveKit room)"
        )
        self._line(
            f"simulating {run_options.calls} call(s), {run_options.concurrency} at a time, scenario(s) "
            f"{', '.join(s.name for s in loaded)}, against {run_options.base_url} via {transport}"
        )
        summary, _ = asyncio.run(run_calls(run_options, self._line))
        self._line(
            f"done: {summary['completed']}/{summary['calls']} completed, {summary['turns']} turns, "
            f"{summary['interrupted_turns']} interrupted, {summary['reconnects']} reconnects, "
            f"{summary['tool_calls']} tool calls ({summary['tool_replays']} replays), "
            f"e2e p50 {summary['stage_ms']['e2e']['p50']} ms"
        )
        heard = summary["heard_ms"]
        self._line(
            f"heard by the caller: {summary['heard_turns']} turns, p50 {heard['p50']} ms, p99 {heard['p99']} ms, "
            f"heard − e2e p50 {summary['heard_difference_ms']['p50']} ms, "
            f"{summary['heard_mismatches']} beyond the tolerance, {summary['heard_unmatched']} utterances unmatched"
        )
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            self.stdout.flush()
        if summary["failed"]:
            for error in summary["errors"]:
                self.stderr.write(error)
            sys.exit(1)

    def _line(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _keys(self, options: dict[str, Any]) -> tuple[str, str, bool]:
        """(client key, agent key, shares the DB). Without --api-key: the simulator's own clients."""
        from django.db import DatabaseError

        from agents_app.runtime.simulator.credentials import key_file, simulator_keys

        api_key, agent_key = options["api_key"], options["agent_api_key"]
        try:
            if not api_key:
                api_key, own_agent_key = simulator_keys()
                agent_key = agent_key or own_agent_key
                self._line(f"using the simulator's own API client (keys in {key_file()})")
            elif not agent_key:
                from sessions_app.services import api_client_authenticate

                # With a given key, the DB may still be shared: borrow our agent key for tool retries.
                if api_client_authenticate(key=api_key) is None:
                    return api_key, agent_key, False
                agent_key = simulator_keys()[1]
            return api_key, agent_key, True
        except DatabaseError as exc:
            if not options["api_key"]:
                raise CommandError(
                    f"no --api-key given and the platform database is not reachable ({exc}); pass --api-key "
                    "(create one with `manage.py create_api_client NAME`)"
                ) from exc
            return api_key, agent_key, False
