"""The LiveKit worker runner (agents_app/runtime/worker/livekit_worker.py): logging, options, dead jobs."""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import socket
from types import SimpleNamespace

import pytest
from django.test import override_settings
from livekit.agents.ipc.log_queue import LogQueueHandler
from livekit.agents.utils.aio import duplex_unix

from agents_app.runtime.worker import livekit_worker
from voiceplatform.logging import ContextFilter, RedactFilter, log_context


@pytest.fixture
def job_process_root_logger():
    """The root logger as a livekit job process has it: Django's console handler, then
    the log queue handler livekit adds (job_proc_lazy_main.proc_main)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    ours, theirs = socket.socketpair()
    queue_handler = LogQueueHandler(duplex_unix._Duplex.open(ours))
    console = logging.StreamHandler()
    root.handlers[:] = [console, queue_handler]
    yield root, queue_handler, duplex_unix._Duplex.open(theirs)
    root.handlers[:] = saved
    queue_handler.close()


def test_a_job_process_logs_once_through_the_queue_with_context_and_redaction(job_process_root_logger) -> None:
    root, queue_handler, worker_end = job_process_root_logger

    livekit_worker.adopt_job_process_logging()

    assert root.handlers == [queue_handler], "only the queue: the worker prints each line once"
    assert {type(f) for f in queue_handler.filters} == {ContextFilter, RedactFilter}
    with log_context(session_id="s-1", room="vs-1"):
        logging.getLogger("agents_app.test").warning("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXh4 used")
    record = pickle.loads(worker_end.recv_bytes())
    assert record.session_id == "s-1" and record.room == "vs-1"
    assert "[REDACTED]" in record.getMessage() and "eyJhbGci" not in record.getMessage()


def test_outside_a_job_process_the_handlers_are_left_alone() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    livekit_worker.adopt_job_process_logging()
    assert root.handlers == before


@override_settings(
    LIVEKIT_URL="ws://127.0.0.1:7880",
    LIVEKIT_API_KEY="k",
    LIVEKIT_API_SECRET="s" * 32,
    AGENT_HEALTH_HOST="127.0.0.1",
    AGENT_HEALTH_PORT=8123,
    AGENT_IDLE_PROCESSES=2,
    AGENT_LOAD_THRESHOLD=0.6,
    AGENT_MAX_JOBS=4,
)
@pytest.mark.parametrize("dev", [True, False])
def test_the_worker_is_built_with_the_platforms_settings(dev: bool) -> None:
    server = livekit_worker.build_server(dev=dev)

    # livekit-agents 1.8.9 (pinned) keeps these as attributes; they are what it uses.
    assert (server._host, server._port) == ("127.0.0.1", 8123), "health server on loopback"
    assert server._num_idle_processes == 2, "warm job processes in dev too"
    assert server._load_threshold == 1.0, "full at AGENT_MAX_JOBS calls, in both modes"
    assert server._load_fnc(SimpleNamespace(active_jobs=[1, 2])) == 0.5  # AGENT_MAX_JOBS=4
    assert server._prometheus_port is None, "one exporter per worker: ours"
    assert server._prometheus_multiproc_dir == str(livekit_worker.multiproc_dir())
    assert server._agent_name == "voiceplatform-agent", "explicit dispatch by agent name"


async def test_a_job_process_that_dies_mid_call_is_taken_out_of_its_room(monkeypatch) -> None:
    from sessions_app import livekit_server

    removed: list[tuple[str, str]] = []

    async def remove(*, room: str, identity: str) -> None:
        removed.append((room, identity))

    monkeypatch.setattr(livekit_server, "participant_remove_async", remove)
    handlers: dict[str, object] = {}
    pool = SimpleNamespace(on=lambda event, fn: handlers.setdefault(event, fn))
    livekit_worker._watch_job_processes(SimpleNamespace(_proc_pool=pool))
    info = SimpleNamespace(
        job=SimpleNamespace(room=SimpleNamespace(name="vs-1")), accept_arguments=SimpleNamespace(identity="agent-AJ_1")
    )

    on_closed = handlers["process_closed"]
    on_closed(SimpleNamespace(running_job=info, exitcode=-9, killed=False, pid=1))  # SIGKILL, OOM
    on_closed(SimpleNamespace(running_job=info, exitcode=0, killed=False, pid=2))  # a job that ended
    on_closed(SimpleNamespace(running_job=info, exitcode=-10, killed=True, pid=3))  # livekit killed it
    on_closed(SimpleNamespace(running_job=None, exitcode=-9, killed=False, pid=4))  # an idle process
    await asyncio.sleep(0.05)

    assert removed == [("vs-1", "agent-AJ_1")]


@override_settings(AGENT_MAX_JOBS=0, AGENT_LOAD_THRESHOLD=0.6)
def test_with_no_job_limit_the_worker_keeps_livekits_cpu_load() -> None:
    assert livekit_worker.load_options(dev=False) == {"load_threshold": 0.6}
    assert livekit_worker.load_options(dev=True) == {"load_threshold": math.inf}
