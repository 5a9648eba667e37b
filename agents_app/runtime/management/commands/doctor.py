"""`manage.py doctor`: check that this deployment can take calls (voiceplatform/doctor/).

Prints one line per check as it finishes (check, OK/WARN/FAIL, what it saw, then → what
to do), then a summary. Exits 1 when a check that a call needs failed, 0 otherwise
(warnings, such as development settings, do not fail it). `--json` prints one JSON
document instead, for scripts and monitoring.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from voiceplatform.doctor.base import FAIL, Check
from voiceplatform.doctor.report import collect, format_row, summary


class Command(BaseCommand):
    help = "Check the database, Redis, Celery, LiveKit, the agent worker, models, prompts and tool secrets."
    requires_system_checks: list[str] = []  # the doctor reports problems; it must not stop on them

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON document instead of a table.")
        parser.add_argument(
            "--probe-timeout",
            type=float,
            default=20.0,
            help="Seconds to wait for an agent worker to join the LiveKit probe room (default %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["probe_timeout"] <= 0:
            self.stderr.write("--probe-timeout must be more than 0 seconds")
            sys.exit(2)
        as_json = options["json"]

        def show(check: Check) -> None:
            if not as_json:
                self.stdout.write(format_row(check))
                self.stdout.flush()

        if not as_json:
            self.stdout.write(f"{'CHECK':<24} {'RESULT':<6} DETAIL  (→ what to do)")
        checks = collect(probe_timeout=options["probe_timeout"], on_check=show)
        failed = any(c.status == FAIL for c in checks)
        if as_json:
            body = {"ok": not failed, "summary": summary(checks), "checks": [c.as_dict() for c in checks]}
            self.stdout.write(json.dumps(body, indent=2))
        else:
            self.stdout.write("")
            self.stdout.write(f"doctor: {summary(checks)}")
        if failed:
            sys.exit(1)
