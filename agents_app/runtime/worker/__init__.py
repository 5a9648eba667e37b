"""The agent worker: one livekit-agents job per voice session (LiveKit room or local call).

`entrypoint.entrypoint` is the single entrypoint for both transports (its `JobRuntime`
runs one job); `platform_agent` is the livekit Agent and the session options; `control`
the platform's interrupt/end/crash messages and the interrupt RPC; `job_session` claiming
and ending the session and the doctor's probe. `local` (with `local_audio`) is the
in-process transport used when LIVEKIT_URL is unset, `local_server` its agent host.
"""

from __future__ import annotations

import os

import django
from django.apps import apps

# Job processes of the livekit worker import this package fresh: set Django up first.
if not apps.ready and not apps.loading:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
    django.setup()

# livekit plugins must be registered on the main thread, so they are imported with the
# package (normally on the main thread) rather than lazily inside a job or a prewarm thread.
from livekit.plugins import openai as _openai  # noqa: F401
from livekit.plugins import silero as _silero  # noqa: F401
