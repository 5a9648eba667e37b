"""Create an API client and print its key (shown once; only its sha256 is stored)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from agents_app.models import Agent
from sessions_app.models import ApiClient, ApiScope
from sessions_app.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client. The key is printed alone on the last line of output; store it now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="A unique name for the client app.")
        parser.add_argument(
            "--scope",
            choices=list(ApiScope.values),
            default=ApiScope.CLIENT,
            help="client: open voice sessions (default). agent: invoke tools as an agent.",
        )
        parser.add_argument("--webhook-url", default="", help="Where post-call reports are POSTed (optional).")
        parser.add_argument(
            "--agent",
            action="append",
            default=[],
            metavar="SLUG",
            help="Agent-scope keys: an agent whose sessions the key may call tools for (repeat for more).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError("The client name must not be empty.")
        if len(name) > ApiClient._meta.get_field("name").max_length:
            raise CommandError("The client name is too long (120 characters at most).")
        if ApiClient.objects.filter(name=name).exists():
            raise CommandError(f"An API client named {name!r} already exists; pick another name.")
        slugs = [slug.strip() for slug in options["agent"] if slug.strip()]
        if slugs and options["scope"] != ApiScope.AGENT:
            raise CommandError("--agent is for agent-scope keys (--scope agent).")
        agents = list(Agent.objects.filter(slug__in=slugs))
        missing = sorted(set(slugs) - {a.slug for a in agents})
        if missing:
            raise CommandError(f"No agent with slug {', '.join(missing)}.")
        try:
            client, key = api_client_create(name=name, scope=options["scope"], webhook_url=options["webhook_url"])
        except IntegrityError as exc:  # created concurrently under the same name
            raise CommandError(f"An API client named {name!r} already exists; pick another name.") from exc
        client.agents.set(agents)
        if options["scope"] == ApiScope.AGENT and not agents:
            self.stderr.write(
                "Note: this agent key serves no agent yet (--agent SLUG, or the admin): it can call no tool."
            )
        self.stdout.write(f"Created API client {client.name!r} (scope {client.scope}). The key is shown only once:")
        self.stdout.write(key)
