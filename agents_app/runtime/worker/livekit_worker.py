"""`manage.py runagent` with LIVEKIT_URL set: a livekit-agents worker, run without livekit's CLI.

livekit-agents' Python CLI (`cli.run_app`, deprecated in 1.8) adds its own stdout handler
to the root logger, so every line came out twice, once without our redaction, and it
hides the worker's INFO lines (registration) behind its own level flags. This runner uses
the worker's public API instead (`AgentServer.run`, `drain`, `aclose`) with the
platform's logging, and sets what the CLI left to defaults on purpose:

- explicit dispatch by agent name (settings.LIVEKIT_AGENT_NAME);
- idle job processes kept warm (AGENT_IDLE_PROCESSES, also in `dev`, where livekit keeps
  none and every job cold-starts its models past the call page's agent-join wait);
- a load of running calls out of AGENT_MAX_JOBS instead of the machine's CPU load
  (`load_options`);
- the health/worker HTTP server on AGENT_HEALTH_HOST:AGENT_HEALTH_PORT (loopback by
  default; livekit binds every interface);
- one Prometheus exporter per worker (voiceplatform.metrics_server on AGENT_METRICS_PORT)
  that adds up the job processes' samples from a per-worker PROMETHEUS_MULTIPROC_DIR.
  livekit's own `prometheus_port` is not used.

SIGTERM/SIGINT drain the worker (running calls finish, no new ones are taken; `dev`
skips the drain), a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger("agents_app.runtime.worker")


def multiproc_dir() -> Path:
    """Where this worker's job processes write their metric samples (one folder per worker)."""
    return Path(settings.DATA_DIR) / "prometheus" / f"agent-{os.getpid()}"


def build_server(*, dev: bool) -> Any:
    from livekit.agents import AgentServer

    from agents_app.runtime.worker.entrypoint import entrypoint, prewarm

    idle = settings.AGENT_IDLE_PROCESSES
    server = AgentServer(
        ws_url=settings.LIVEKIT_URL,
        api_key=settings.LIVEKIT_API_KEY,
        api_secret=settings.LIVEKIT_API_SECRET,
        setup_fnc=prewarm,
        # Prewarm loads the VAD, Piper and Moonshine: slow on a busy box.
        initialize_process_timeout=60.0,
        num_idle_processes=idle,
        **load_options(dev=dev),
        host=settings.AGENT_HEALTH_HOST,
        port=settings.AGENT_HEALTH_PORT,
        prometheus_multiproc_dir=str(multiproc_dir()),
        drain_timeout=settings.AGENT_DRAIN_TIMEOUT_SECONDS,
        # A job's end waits for its pending DB writes through a database outage.
        shutdown_process_timeout=settings.RECORDER_RETRY_SECONDS + 15.0,
        log_level=settings.LOG_LEVEL,
    )
    server.rtc_session(entrypoint, agent_name=settings.LIVEKIT_AGENT_NAME)
    return server


def load_options(*, dev: bool) -> dict[str, Any]:
    """How the worker measures its load, which the server also uses to route jobs.

    AGENT_MAX_JOBS > 0 (default 4): load = running jobs / AGENT_MAX_JOBS, and the worker is
    full at that many calls. livekit's default is the machine's CPU load, which the
    server compares with its own target (0.7; deploy/livekit/livekit.yaml raises it to
    1.0): on a shared or busy machine (the other processes of the demo, a test run) it
    refused jobs while this worker had none, even in `dev`, and every call waited for
    the platform's re-dispatch. AGENT_MAX_JOBS=0 keeps the CPU load, full above
    AGENT_LOAD_THRESHOLD (`start`; `dev` never reports itself full).
    """
    max_jobs = settings.AGENT_MAX_JOBS
    if max_jobs <= 0:
        return {"load_threshold": math.inf if dev else settings.AGENT_LOAD_THRESHOLD}

    def jobs_load(server: Any) -> float:
        return min(1.0, len(server.active_jobs) / max_jobs)

    return {"load_fnc": jobs_load, "load_threshold": 1.0}


async def serve(*, dev: bool) -> None:
    from voiceplatform.metrics_server import start_agent_metrics_server

    # Set before any job process starts: they inherit it and write their samples there.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir())
    multiproc_dir().mkdir(parents=True, exist_ok=True)
    exporter = start_agent_metrics_server(jobs_only=True)
    server = build_server(dev=dev)

    @server.on("worker_registered")
    def _registered(worker_id: str, server_info: Any) -> None:
        logger.info(
            "agent worker %s registered with LiveKit at %s as %r (%s, server %s)",
            worker_id,
            settings.LIVEKIT_URL,
            settings.LIVEKIT_AGENT_NAME,
            "dev" if dev else "start",
            getattr(server_info, "version", "?"),
        )

    @server.on("worker_started")
    def _started() -> None:
        _watch_job_processes(server)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def _on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            logger.warning("second signal: exiting without waiting for running calls")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal)

    logger.info(
        "agent worker %r connecting to %s (%s; health on %s:%s; %s idle job process(es))",
        settings.LIVEKIT_AGENT_NAME,
        settings.LIVEKIT_URL,
        "dev" if dev else "start",
        settings.AGENT_HEALTH_HOST,
        settings.AGENT_HEALTH_PORT,
        settings.AGENT_IDLE_PROCESSES,
    )
    run = asyncio.create_task(server.run(devmode=dev, unregistered=False), name="livekit-worker")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            run.result()  # the worker stopped by itself: raise its error
            return
        if not dev:
            logger.info("draining: running calls finish, no new ones are taken")
            with contextlib.suppress(TimeoutError):
                await server.drain()
    finally:
        stopped.cancel()
        await server.aclose()
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
        if exporter is not None:
            exporter.close()
        logger.info("agent worker stopped")


def _watch_job_processes(server: Any) -> None:
    """When a job process dies mid-call (OOM, SIGKILL), take its agent out of the room now.

    Without this the LiveKit server keeps the dead agent's participant until its own
    timeout (~20 s measured with v1.13.5), and the platform re-dispatches only when that
    participant leaves. Removing it through the server API makes the `participant_left`
    webhook, and with it the re-dispatch, come at once. Best effort: the process pool is
    private in livekit-agents (1.8.9, pinned); without it the server's timeout still works.
    """
    pool = getattr(server, "_proc_pool", None)
    if pool is None or not hasattr(pool, "on"):
        logger.info("livekit-agents has no process pool to watch: dead jobs leave on the server's timeout")
        return

    def on_closed(proc: Any) -> None:
        info = getattr(proc, "running_job", None)
        code = getattr(proc, "exitcode", None)
        if info is None or code in (0, None) or getattr(proc, "killed", False):
            return  # a clean exit, or livekit itself killed a job that had ended
        room, identity = info.job.room.name, info.accept_arguments.identity
        logger.warning("job process %s of room %s died (exit code %s): removing %s", proc.pid, room, code, identity)
        asyncio.get_running_loop().create_task(_remove_dead_agent(room=room, identity=identity))

    pool.on("process_closed", on_closed)


async def _remove_dead_agent(*, room: str, identity: str) -> None:
    from sessions_app import livekit_server

    try:
        await livekit_server.participant_remove_async(room=room, identity=identity)
    except livekit_server.LiveKitServerError as exc:
        logger.info("could not remove %s from %s (%s); the server's timeout will", identity, room, exc)


def run_worker(*, dev: bool) -> None:
    logging.getLogger("livekit.agents").setLevel(logging.INFO)
    asyncio.run(serve(dev=dev))


def adopt_job_process_logging() -> None:
    """In a job process, log through livekit's log queue only (to the worker, which prints).

    A job process imports Django, so it has the platform's console handler too, and each
    of its lines came out twice. The queue handler gets our context and redaction
    filters, so the worker prints the job's lines once, with session fields, redacted.
    """
    from livekit.agents.ipc.log_queue import LogQueueHandler

    from voiceplatform.logging import ContextFilter, RedactFilter

    root = logging.getLogger()
    queue_handlers = [h for h in root.handlers if isinstance(h, LogQueueHandler)]
    if not queue_handlers:
        return  # not a livekit job process (the local transport, tests)
    for handler in list(root.handlers):
        if handler not in queue_handlers:
            root.removeHandler(handler)
    for handler in queue_handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
            handler.addFilter(RedactFilter())
