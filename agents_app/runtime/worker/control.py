"""The job's control channel: the platform's interrupt, end and (fault injection) crash
messages for one session, received over the channel layer (sessions_app.broadcast's
agent control group; built by sessions_app.live.messages)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)


async def listen_control(session_id: str, on_message: Callable[[dict[str, Any]], None]) -> None:
    """Hand every control message of the session to `on_message` until cancelled. A
    failed receive (a Redis hiccup) is retried: it must not deafen the job."""
    from channels.layers import get_channel_layer

    from sessions_app import broadcast

    layer = get_channel_layer()
    if layer is None:
        return
    group = broadcast.agent_control_group(session_id)
    channel = ""
    try:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("control receive failed (%s); retrying", exc)
                await asyncio.sleep(0.2)
                continue
            on_message(message)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.warning("agent control listener stopped for %s", session_id, exc_info=True)
    finally:
        if channel:
            with contextlib.suppress(Exception):
                await asyncio.shield(layer.group_discard(group, channel))


def listener_context() -> contextvars.Context:
    """A fresh context for the control listener task, with only the job's log fields.

    The channel layer starts its shared Redis reader task (channels_redis'
    `RedisSingleShardConnection._do_receiving`) from inside the first listener that
    subscribes, and that task keeps a copy of the listener's context for the life of the
    process. With the job's own context (livekit's job context var → JobContext →
    AgentSession → our handlers → JobRuntime, Recorder, LocalCall) it kept the host's first
    call alive until the host stopped.
    """
    from voiceplatform.logging import bind_log_context, current_log_context

    fields = current_log_context()
    context = contextvars.Context()
    context.run(bind_log_context, **fields)
    return context


def crash_job(session_id: str) -> None:
    """Fault injection (AGENT_FAULT_INJECTION): die as an OOM-killed job process would.

    SIGKILL: no goodbye to the room, no flush, no shutdown callbacks. The platform
    must notice the agent left and dispatch a new job (sessions_app.lifecycle).
    """
    if not settings.AGENT_FAULT_INJECTION:
        logger.warning("ignored agent.crash for %s: AGENT_FAULT_INJECTION is off", session_id)
        return
    logger.warning("agent.crash for %s: killing this job process (pid %d)", session_id, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def register_interrupt_rpc(room: Any, interrupt: Callable[[str], None]) -> None:
    """The caller's `interrupt` RPC (the call page's button): cut the agent's speech."""

    async def _interrupt(data: Any) -> str:
        interrupt("client")
        return json.dumps({"ok": True})

    try:
        room.local_participant.register_rpc_method("interrupt", _interrupt)
    except Exception:
        logger.warning("could not register the interrupt RPC method", exc_info=True)
