"""`manage.py phone_lines`: the phone lines and what the LiveKit server holds for them.

    manage.py phone_lines           list the lines (number, agent, who may call, on the server)
    manage.py phone_lines --sync    apply every line to LiveKit's SIP service and delete the
                                    trunks and rules the platform made for lines that are gone

The admin applies a line when it is saved; `--sync` is for a server that was down then, a
new server, or `make demo` starting the SIP service. It exits 1 if the server refused a line.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents_app.models import PhoneLine
from agents_app.services import phone_lines_sync_all
from sessions_app.livekit_server import LiveKitServerError


class Command(BaseCommand):
    help = "List the phone lines; --sync applies them to LiveKit's SIP service."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sync", action="store_true", help="Apply every line to the server; remove orphans.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["sync"]:
            self.stdout.write("==> applying the phone lines to LiveKit's SIP service")
            try:
                report = phone_lines_sync_all()
            except LiveKitServerError as exc:
                raise CommandError(str(exc)) from exc
            for number in report["synced"]:
                self.stdout.write(self.style.SUCCESS(f"  live     {number}"))
            for removed in report["removed"]:
                self.stdout.write(f"  removed  {removed} (the platform's, for a line that is gone)")
            for failed in report["failed"]:
                self.stdout.write(self.style.ERROR(f"  refused  {failed}"))
            if report["failed"]:
                raise CommandError(f"{len(report['failed'])} phone line(s) not applied (above)")
            return
        lines = PhoneLine.objects.select_related("agent").order_by("number")
        if not lines:
            self.stdout.write("No phone lines. Add one in the admin (Agents → Phone lines).")
        for line in lines:
            who = ", ".join(line.allowed_addresses) or "-"
            auth = " + digest auth" if line.auth_username else ""
            state = (
                f"NOT applied: {line.sync_error}"
                if line.sync_error
                else ("inactive" if not line.active else f"trunk {line.livekit_trunk_id or '-'}")
            )
            self.stdout.write(f"{line.number:<16} → {line.agent.slug:<16} from {who}{auth}; {state}")
