"""Create an API client and print its key (shown once; only its sha256 is stored)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

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

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError("The client name must not be empty.")
        if len(name) > ApiClient._meta.get_field("name").max_length:
            raise CommandError("The client name is too long (120 characters at most).")
        if ApiClient.objects.filter(name=name).exists():
            raise CommandError(f"An API client named {name!r} already exists; pick another name.")
        try:
            client, key = api_client_create(name=name, scope=options["scope"], webhook_url=options["webhook_url"])
        except IntegrityError as exc:  # created concurrently under the same name
            raise CommandError(f"An API client named {name!r} already exists; pick another name.") from exc
        self.stdout.write(f"Created API client {client.name!r} (scope {client.scope}). The key is shown only once:")
        self.stdout.write(key)
