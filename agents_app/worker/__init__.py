"""The agent worker: one livekit-agents job per voice session (LiveKit room or local call).

`entrypoint.entrypoint` is the single entrypoint for both transports; `local` is the
in-process transport used when LIVEKIT_URL is unset.
"""

# livekit plugins must be registered on the main thread, so they are imported with the
# package (normally on the main thread) rather than lazily inside a job or a prewarm thread.
from livekit.plugins import openai as _openai  # noqa: F401
from livekit.plugins import silero as _silero  # noqa: F401
