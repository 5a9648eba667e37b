#!/usr/bin/env python
"""Django's command-line utility for the voice platform."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
    if sys.argv[1:2] == ["demo"]:
        # The demo is a local, throwaway deployment: development defaults for it and for
        # every process it starts (voiceplatform/settings.py, DEV_DEFAULTS).
        os.environ.setdefault("VOICE_DEV_DEFAULTS", "true")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # Load the settings first: Django's command runner would swallow a configuration
        # error here and fail later with an unrelated AppRegistryNotReady traceback.
        settings.INSTALLED_APPS  # noqa: B018
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A missing or malformed env variable: one clear line, not a traceback.
        print(f"Configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
