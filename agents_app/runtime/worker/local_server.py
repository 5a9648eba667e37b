"""The local agent host: `manage.py runagent` when LIVEKIT_URL is unset.

A LiveKit server would take the caller's audio into a room and dispatch an agent job to
it. With no server, this small TCP host does both: a caller connects to the `url` the
API returned (`local://host:port`), says hello with its LiveKit token, and the host

1. verifies the token with livekit-api's `TokenVerifier` (same key/secret as the API),
2. finds the VoiceSession by the token's room (`VoiceSession.room_name`),
3. moves the session created|reconnecting → active,
4. runs the platform `entrypoint` for it in-process (`run_local_job` over a `LocalCall`),
5. streams PCM both ways: caller → agent as the caller paces it, agent → caller as played.

When the caller drops, the job ends and the session goes active → reconnecting. A caller
that comes back with a fresh token (`POST …/reconnect`) gets a new job whose context is
rebuilt from the stored turns. An `agent-restart` control message kills the running job
abruptly (a simulated crash) and starts a new one for the same session, as a re-dispatch
would. Wire protocol: agents_app/runtime/worker/local_wire.py, docs/simulator.md; the session
lifecycle calls: agents_app/runtime/worker/local_lifecycle.py.

The same `AgentHost` also serves in-process callers (`simulate_calls --local-agent
inprocess`) through `memory_channel_pair()`, so both paths share one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from typing import Any

from django.conf import settings

from agents_app.runtime.worker.local_lifecycle import (
    HelloRejected,
    agent_joined,
    agent_left,
    caller_joined,
    caller_left,
    verify_token,
)
from agents_app.runtime.worker.local_wire import (
    PROTOCOL_VERSION,
    AudioChunk,
    Channel,
    Message,
    ProtocolError,
    StreamChannel,
)
from agents_app.runtime.worker.memory import release_call_memory

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
JOB_END_TIMEOUT_SECONDS = 15.0
# Offline recognisers misbehave on exact-zero silence (PocketSphinx can return nothing,
# Moonshine's model says "You"); a few LSB of noise, as a real line has, avoids it.
INPUT_NOISE_LSB = 3


class CallBridge:
    """One connected caller: pumps audio to and from the current local job."""

    def __init__(self, *, host: AgentHost, channel: Channel, session_id: str, allow_control: bool) -> None:
        self.host = host
        self.channel = channel
        self.session_id = session_id
        self.allow_control = allow_control
        self.jobs = 0
        # This connection's id for the session lifecycle (a LiveKit participant SID's role).
        self.connection = f"local-{uuid.uuid4().hex[:12]}"
        self.agent_identity = ""
        self.room = ""
        self.call: Any = None
        self._job: asyncio.Task[Any] | None = None
        self._pump: asyncio.Task[Any] | None = None
        self._outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._job_done = asyncio.Event()
        self.finished = asyncio.Event()

    async def _start_job(self) -> None:
        from agents_app.runtime.worker.entrypoint import entrypoint
        from agents_app.runtime.worker.local import LocalCall, run_local_job

        self.jobs += 1
        # Each job is a new agent for the lifecycle, as a new LiveKit job is a new participant.
        self.agent_identity = f"local-job-{uuid.uuid4().hex[:10]}"
        self._job_done.clear()
        call = LocalCall(input_noise_lsb=INPUT_NOISE_LSB)
        call.on_agent_speaking(
            lambda speaking: self._outbox.put_nowait({"type": "agent.speaking", "speaking": speaking})
        )
        self.call = call
        # The pump first: it must be listening before the job plays its first frame.
        self._pump = asyncio.create_task(self._pump_agent_audio(call), name=f"local-pump-{self.session_id}")
        self._job = asyncio.create_task(
            run_local_job(session_id=self.session_id, call=call, entrypoint=entrypoint),
            name=f"local-job-{self.session_id}",
        )
        self._job.add_done_callback(self._on_job_done)
        await agent_joined(self.session_id, self.agent_identity)

    def _on_job_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            pass
        elif task.exception() is not None:
            logger.error("local job for %s failed", self.session_id, exc_info=task.exception())
        if self.call is not None and task is self._job:
            self._job_done.set()

    async def _pump_agent_audio(self, call: Any) -> None:
        async for frame in call.agent_frames():
            self._outbox.put_nowait(AudioChunk.from_frame(frame))

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            await self.channel.send(message)

    async def _stop_job(self, *, kill: bool, reason: str) -> bool:
        """Stop the job; returns whether the lifecycle wants a new agent now (a crash mid-call)."""
        call, job = self.call, self._job
        if call is None or job is None:
            return False
        self._job = None  # stopped on purpose: not "the job ended by itself" for run()
        if kill:
            call.kill()
        else:
            call.hangup(reason)
        try:
            await asyncio.wait_for(asyncio.shield(job), JOB_END_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("local job for %s did not end in time; killing it", self.session_id)
            call.kill()
            with contextlib.suppress(BaseException):
                await job
        except BaseException:  # the job's own failure is logged by _on_job_done
            pass
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
        try:
            return await agent_left(self.session_id, self.agent_identity, reason)
        except Exception:
            logger.exception("could not record the end of the agent job of %s", self.session_id)
            return False

    async def restart(self) -> None:
        """Kill the job abruptly (a simulated crash); the lifecycle's rule starts a new one."""
        if await self._stop_job(kill=True, reason=f"simulated crash (agent-restart of job {self.jobs})"):
            await self._start_job()
            self._outbox.put_nowait({"type": "agent.restarted", "job": self.jobs})

    async def run(self) -> str:
        """Serve the caller until it leaves or the job ends; returns why it ended."""
        sender = asyncio.create_task(self._send_loop(), name="local-sender")
        await self._start_job()
        reason = "caller dropped"
        clean = False
        try:
            while True:
                recv = asyncio.ensure_future(self.channel.recv())
                done_wait = asyncio.ensure_future(self._job_done.wait())
                await asyncio.wait({recv, done_wait}, return_when=asyncio.FIRST_COMPLETED)
                done_wait.cancel()
                if not recv.done():
                    recv.cancel()
                    with contextlib.suppress(BaseException):
                        await recv
                    # The job ended by itself (the platform ended the session, or it failed).
                    reason = "agent job ended"
                    clean = True
                    break
                message = recv.result()
                if message is None:
                    break
                if isinstance(message, AudioChunk):
                    if self.call is not None and not self.call.closed:
                        self.call.push_caller_frame(message.to_frame())
                    continue
                kind = message.get("type")
                if kind == "hangup":
                    reason, clean = "caller hung up", True
                    break
                if kind == "control" and message.get("action") == "agent-restart":
                    if not self.allow_control:
                        self._outbox.put_nowait(
                            {"type": "error", "code": "forbidden", "message": "control is disabled"}
                        )
                        continue
                    await self.restart()
                    continue
                if kind == "ping":
                    self._outbox.put_nowait({"type": "pong"})
                    continue
                self._outbox.put_nowait(
                    {"type": "error", "code": "unknown_message", "message": f"unknown message {kind!r}"}
                )
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            self._outbox.put_nowait({"type": "error", "code": "protocol_error", "message": str(exc)})
        finally:
            # The caller's leave first (an older connection's leave changes nothing), then the
            # job's end: the agent is then lost with the caller gone, as in LiveKit mode.
            try:
                await caller_left(
                    self.session_id, self.connection, "caller_dropped" if reason == "caller dropped" else "caller_left"
                )
            except Exception:
                logger.exception("could not record the caller leaving %s", self.session_id)
            await self._stop_job(kill=False, reason=reason)
            if clean:
                self._outbox.put_nowait({"type": "bye", "reason": reason})
            self._outbox.put_nowait(None)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(sender, 5)
            await self.channel.close()
        return reason


class AgentHost:
    """Accepts callers (TCP or in-process) and runs one local job per connected caller."""

    def __init__(self, *, allow_control: bool = True) -> None:
        self.allow_control = allow_control
        self.bridges: dict[str, CallBridge] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, channel: Channel) -> None:
        try:
            hello = await asyncio.wait_for(channel.recv(), HELLO_TIMEOUT_SECONDS)
        except (TimeoutError, ProtocolError):
            await channel.close()
            return
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            await channel.send(
                {"type": "error", "code": "hello_expected", "message": "the first message must be a hello"}
            )
            await channel.close()
            return
        try:
            room = verify_token(str(hello.get("token") or ""))
            previous = self._bridge_for_room(room)
            if previous is not None:
                # The same caller came back while its old connection looked alive: the
                # old connection and its job end first, so one job serves the session.
                await previous.channel.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(previous.finished.wait(), JOB_END_TIMEOUT_SECONDS + 5)
            bridge = CallBridge(host=self, channel=channel, session_id="", allow_control=self.allow_control)
            joined = await caller_joined(room, bridge.connection)
        except HelloRejected as exc:
            await channel.send({"type": "error", "code": exc.code, "message": str(exc)})
            await channel.close()
            return
        session_id = joined["session_id"]
        bridge.session_id = session_id
        bridge.room = room
        self.bridges[session_id] = bridge
        await channel.send({"type": "welcome", "protocol": PROTOCOL_VERSION, "session_id": session_id, "room": room})
        logger.info("caller joined session %s", session_id)
        try:
            reason = await bridge.run()
        finally:
            if self.bridges.get(session_id) is bridge:
                del self.bridges[session_id]
            bridge.finished.set()
        logger.info("caller left session %s (%s)", session_id, reason)
        # The call's buffers are freed now; hand the pages back (agents_app/runtime/worker/memory.py).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(release_call_memory)

    def _bridge_for_room(self, room: str) -> CallBridge | None:
        for bridge in self.bridges.values():
            if bridge.room == room:
                return bridge
        return None

    def spawn(self, channel: Channel) -> asyncio.Task[Any]:
        task = asyncio.create_task(self.handle(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Hang up every caller (each job flushes its records)."""
        for bridge in list(self.bridges.values()):
            with contextlib.suppress(Exception):
                await bridge.channel.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=JOB_END_TIMEOUT_SECONDS + 5)


async def serve_async(*, host: str | None = None, port: int | None = None, ready: asyncio.Event | None = None) -> None:
    """Listen for callers until SIGINT/SIGTERM (or cancellation)."""
    agent_host = AgentHost(allow_control=settings.LIVEKIT_LOCAL_MODE)
    bind_host = host or settings.LOCAL_AGENT_HOST
    bind_port = port if port is not None else settings.LOCAL_AGENT_PORT

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked by the host, so a shutdown waits for each call to end cleanly.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(agent_host.spawn(StreamChannel(reader, writer)))

    server = await asyncio.start_server(on_connect, bind_host, bind_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(f"local agent host listening on local://{bind_host}:{bind_port}", flush=True)
    if ready is not None:
        ready.set()
    try:
        async with server:
            await stop.wait()
    finally:
        server.close()
        await agent_host.shutdown()
        print("local agent host stopped", flush=True)


def serve() -> None:
    """`manage.py runagent` in local mode: prewarm the models, then serve callers."""
    from agents_app.runtime.worker.entrypoint import prewarm as setup
    from agents_app.runtime.worker.local import prewarm

    try:
        from voiceplatform.metrics_server import start_agent_metrics_server

        start_agent_metrics_server()
    except Exception:  # metrics are optional here; the calls are not
        logger.warning("could not start the agent metrics server", exc_info=True)
    prewarm(setup)
    asyncio.run(serve_async())
