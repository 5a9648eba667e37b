"""Helpers for the real-pipeline tests: a session, a call driver, DB polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection

from agents_app.models import Agent
from sessions_app.models import SessionEvent, Turn, VoiceSession

# Written here, not imported from the worker package, so collecting these tests does not
# load livekit plugins before pytest has set Django up.
LONG_REQUEST = "please tell me everything about your delivery service"


@pytest.fixture(scope="session")
def prewarmed() -> None:
    """VAD, Piper and Moonshine (the offline STT), once per test run."""
    from agents_app.runtime.worker.entrypoint import prewarm as setup
    from agents_app.runtime.worker.local import prewarm

    prewarm(setup)


@pytest.fixture(autouse=True)
def _close_async_orm_connections():
    """The async ORM runs in asgiref's shared thread, whose connection would otherwise
    outlive the test and keep the test database from being dropped."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


def session_row(session_id: str) -> VoiceSession:
    return VoiceSession.objects.get(pk=session_id)


def make_session(agent: Agent, **metadata: Any) -> str:
    """A session opened by an API client (a trusted source of prompt variables)."""
    from sessions_app.models import ApiClient

    version = agent.prompt_versions.get(status="published")
    client, _ = ApiClient.objects.get_or_create(
        name="pipeline-tests", defaults={"key_prefix": "vp_pipeline", "key_hash": "0" * 64}
    )
    session = VoiceSession.objects.create(
        api_client=client,
        caller_id="caller-1",
        room_name=f"room-{uuid.uuid4()}",
        agent=agent,
        prompt_version=version,
        metadata=metadata,
    )
    return str(session.id)


async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a sync DB read in a worker thread and close that thread's connection after
    (so the test database can be dropped at the end of the run)."""

    def run() -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return await sync_to_async(run, thread_sensitive=False)()


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll a sync (DB) predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout

    async def check() -> Any:
        try:
            return await db(predicate)
        except OperationalError as exc:
            # SQLite's in-memory test database is shared-cache: a read that meets the agent's
            # writer thread gets "table is locked" at once (no busy timeout). Poll again.
            if "locked" not in str(exc):
                raise
            return None

    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(interval)


def turns_of(session_id: str) -> list[dict[str, Any]]:
    return list(Turn.objects.filter(session_id=session_id).order_by("index").values())


def event_types(session_id: str) -> list[str]:
    return list(SessionEvent.objects.filter(session_id=session_id).order_by("seq").values_list("type", flat=True))


async def wait_turns(session_id: str, count: int, timeout: float = 40.0) -> list[dict[str, Any]]:
    return await wait_until(lambda: (t := turns_of(session_id)) and len(t) >= count and t, timeout=timeout)


class CallDriver:
    """Runs the platform job over a LocalCall and speaks as the caller with Piper."""

    def __init__(self, session_id: str) -> None:
        from agents_app.runtime.worker.local import LocalCall

        self.session_id = session_id
        self.call = LocalCall()
        self.task: asyncio.Task[None] | None = None
        self.played_seconds = 0.0
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> CallDriver:
        from agents_app.runtime.worker.entrypoint import entrypoint
        from agents_app.runtime.worker.local import run_local_job

        self.task = asyncio.create_task(
            run_local_job(session_id=self.session_id, call=self.call, entrypoint=entrypoint)
        )
        self._listener = asyncio.create_task(self._listen())
        return self

    async def _listen(self) -> None:
        async for frame in self.call.agent_frames():
            self.played_seconds += frame.duration

    async def say(self, text: str) -> None:
        from agents_app.runtime.providers import piper

        audio, rate = await asyncio.to_thread(piper.synthesize, text)
        self.call.push_caller_audio(audio, rate)

    async def wait_speaking(self, speaking: bool = True, timeout: float = 30.0) -> None:
        await self.call.wait_agent_speaking(speaking, timeout=timeout)

    async def hangup(self) -> None:
        self.call.hangup()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)

    async def kill(self) -> None:
        self.call.kill()
        if self.task is not None:
            await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), 30)


def last_request_text(llm: Any) -> list[tuple[str, str]]:
    """(role, text) of the chat messages of the offline LLM's most recent request."""
    from livekit.agents.llm import ChatMessage

    ctx = llm.requests[-1]
    return [(i.role, i.text_content or "") for i in ctx.items if isinstance(i, ChatMessage)]


def provider_events(session_id: str, prefix: str = "provider.") -> list[dict[str, Any]]:
    return [
        {"type": e.type, **e.payload}
        for e in SessionEvent.objects.filter(session_id=session_id, type__startswith=prefix).order_by("seq")
    ]


class TextJob:
    """The job's real handlers (JobRuntime) around a text-mode AgentSession."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id

    async def __aenter__(self) -> TextJob:
        from livekit.agents import AgentSession

        from agents_app.runtime.providers.factory import build_providers
        from agents_app.runtime.providers.fallback import ChainMonitor, session_conn_options
        from agents_app.runtime.worker.config import load_job_config
        from agents_app.runtime.worker.entrypoint import JobRuntime
        from agents_app.runtime.worker.platform_agent import PlatformAgent

        config = await load_job_config(self.session_id)
        ctx = SimpleNamespace(job=SimpleNamespace(id="text-job"), proc=SimpleNamespace(userdata={}))
        runtime = JobRuntime(ctx=ctx, config=config, call=None)  # type: ignore[arg-type]
        runtime.recorder.start()
        runtime.providers = build_providers(config.agent)
        session = AgentSession(llm=runtime.providers.llm, vad=None, conn_options=session_conn_options(config.agent))
        runtime.session = session
        runtime.resilience = ChainMonitor(
            record_event=runtime.recorder.record_event, on_stage_failed=runtime._on_stage_failed
        )
        runtime.resilience.watch("llm", runtime.providers.llm)
        session.on("conversation_item_added", runtime._on_item)
        session.on("error", runtime._on_error)
        await session.start(PlatformAgent(config=config, tracker=runtime.tracker, tools=[]))
        self.runtime, self.session = runtime, session
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.aclose()
        self.runtime.tracker.close()
        await self.runtime.recorder.aclose()
