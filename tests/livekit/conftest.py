"""The livekit tier: the platform against a real LiveKit server, in a network namespace.

Run by tests/livekit/run_tier.py (`make test-livekit`, part of `make test`), never
collected otherwise. One platform serves the whole tier, started as in production:

- the LiveKit server built from source (voiceplatform/livekit_dev.py renders
  deploy/livekit/livekit.yaml with this run's ports, a shorter departure_timeout, and a
  second webhook URL: the `webhook_tap` that keeps every signed delivery),
- `manage.py demo --no-traffic` with LIVEKIT_URL set: the web server, Celery with beat,
  and `runagent dev` as a LiveKit worker (the demo restarts a crashed worker),
- an OpenAI-compatible `recording_llm` in this process, which the `lk-recorded` agent's
  LLM (the real livekit-plugins-openai) calls, so a test can read what the model saw.

Callers are the simulator's LiveKitTransport (the livekit rtc SDK) speaking Piper speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents_app.runtime.simulator.api import PlatformClient
from agents_app.runtime.simulator.caller import speak
from agents_app.runtime.simulator.livekit_transport import LiveKitTransport
from tests.e2e.platform import BASE_DIR, Platform, free_port, wait_port
from tests.ports import free_udp_port, free_udp_range
from tests.processes import stop_group
from voiceplatform import embedded_redis, livekit_dev

# A caller who leaves for good ends the call this long after (the room's departure_timeout;
# deploy/livekit/livekit.yaml has 30 s, shortened here to keep the tier short).
DEPARTURE_TIMEOUT_S = 10
RECORDED_AGENT = "lk-recorded"
TYPED_AGENT = "lk-typed"
LONG_ANSWER = (
    "Let me tell you about our coffee. We roast our beans every morning in the shop. "
    "The house blend comes from Colombia and Ethiopia. It is smooth, with notes of chocolate. "
    "We also have a dark roast for espresso lovers. Our cold brew steeps for eighteen hours. "
    "Finally, every cup can be made with oat milk at no extra cost."
)
SHORT_ANSWER = "Of course. What would you like to know?"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test that asked for `show_logs` gets the logs it names in its report."""
    report = yield
    logs = getattr(item, "funcargs", {}).get("show_logs")
    if report.failed and callable(logs):
        report.sections.append(("logs", logs()))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave pytest's verdict for tests/livekit/run_tier.py before the interpreter exits.

    livekit's native runtime (livekit.rtc, the callers' side) has aborted this process at
    interpreter exit, after every test had passed (a Rust panic in a tokio thread, "panic in
    a function that cannot unwind"). The runner then reports this status, not the abort.
    """
    status_file = os.environ.get("VOICE_LIVEKIT_TIER_STATUS")
    if status_file:
        Path(status_file).write_text(f"{int(exitstatus)}\n")


# --- things the tests listen with ---------------------------------------------------------


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True


@dataclass
class WebhookTap:
    """A second webhook receiver for the LiveKit server: keeps every signed delivery."""

    port: int
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tap"

    def events(self, room: str = "") -> list[dict[str, Any]]:
        out = []
        for delivery in list(self.deliveries):
            body = json.loads(delivery["body"])
            if not room or body.get("room", {}).get("name") == room:
                out.append({**delivery, "json": body})
        return out


def _start_tap() -> WebhookTap:
    tap = WebhookTap(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            tap.deliveries.append(
                {"body": body, "authorization": self.headers.get("Authorization", ""), "at": time.time()}
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    tap.server = _Recorder(("127.0.0.1", tap.port), Handler)
    threading.Thread(target=tap.server.serve_forever, daemon=True).start()
    return tap


@dataclass
class RecordingLLM:
    """An OpenAI-compatible streaming chat server that keeps every request it answers."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def assistant_texts(self) -> list[str]:
        """The assistant messages of the last request (the context the model saw)."""
        if not self.requests:
            return []
        return [m.get("content") or "" for m in self.requests[-1]["messages"] if m.get("role") == "assistant"]


def _start_llm() -> RecordingLLM:
    llm = RecordingLLM(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_GET(self) -> None:  # the models list (what `manage.py doctor` asks)
            body = json.dumps({"object": "list", "data": [{"id": "tier-recorded", "object": "model"}]}).encode()
            self.send_response(200 if self.path.rstrip("/").endswith("/models") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            llm.requests.append(body)
            users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
            last = users[-1] if users else ""
            text = LONG_ANSWER if "explain" in str(last).lower() else SHORT_ANSWER
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for word in re.findall(r"\S+\s*", text):
                chunk = {
                    "id": "chatcmpl-tier",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "tier-recorded",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.005)
            done = {"id": "chatcmpl-tier", "object": "chat.completion.chunk", "created": 0, "model": "tier-recorded",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

        def log_message(self, *args: Any) -> None:
            pass

    llm.server = _Recorder(("127.0.0.1", llm.port), Handler)
    threading.Thread(target=llm.server.serve_forever, daemon=True).start()
    return llm


# --- the platform -----------------------------------------------------------------------------


@dataclass
class AgentWorker:
    """One `manage.py runagent` process (LiveKit mode) that a test started, as on another
    host: its own process group (the worker, its forkserver and job processes), its own
    health and metrics ports, its own log."""

    name: str
    proc: subprocess.Popen[Any]
    log_path: Path
    health_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_id(self) -> str:
        """The id LiveKit gave the worker (AW_…), once it registered."""
        found = re.search(r"agent worker (\S+) registered with LiveKit", self.log())
        return found.group(1) if found else ""

    def wait_registered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker_id():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.5)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """A hard crash of the whole host's worker: SIGKILL to its process group, no goodbye."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_group(self.proc, grace=30)  # and the job processes left behind

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class LiveKitPlatform(Platform):
    """`manage.py demo --no-traffic` on a real LiveKit server (Platform starts the demo).

    With `demo_agent=False` the demo starts no agent worker (`--no-agent`): the test starts
    its own with `start_worker`, one or several, as on several hosts.
    """

    def __init__(
        self, tmp: Path, *, tap: WebhookTap, llm: RecordingLLM, demo_agent: bool = True, sip: bool = False
    ) -> None:
        self.tap = tap
        self.llm = llm
        self.demo_agent = demo_agent
        self.workers: list[AgentWorker] = []
        self.server_config: livekit_dev.ServerConfig | None = None
        super().__init__(tmp)
        port = free_port()
        self.server_config = livekit_dev.ServerConfig(
            api_key="tierkey",
            api_secret=secrets.token_urlsafe(36),
            webhook_url=f"{self.base_url}{livekit_dev.WEBHOOK_PATH}",
            port=port,
            udp_port=free_port(),
            extra_webhook_urls=(tap.url,),
            departure_timeout=DEPARTURE_TIMEOUT_S,
            # With the SIP service the two meet in the platform's embedded Redis (database 3).
            redis=livekit_dev.redis_config(f"unix://{embedded_redis.socket_path(self.data_dir)}") if sip else None,
        )
        # LiveKit's SIP service (var/bin/livekit-sip), in this namespace; it announces the
        # namespace's test address (its first non-loopback IPv4) in Contact and SDP.
        self.sip_config: livekit_dev.SipConfig | None = None
        if sip:
            rtp = free_udp_range(40)
            self.sip_config = livekit_dev.SipConfig(
                server=self.server_config,
                sip_port=free_udp_port(),
                rtp_ports=f"{rtp}-{rtp + 39}",
                health_port=free_port(),
                log_level="info",
                # The tier tests the calls, not the SIP service's capacity guard: on this
                # 2-core machine an agent loading its models alone passes livekit-sip's 0.9.
                max_cpu_utilization=1.0,
            )
        self.sip_proc: subprocess.Popen[Any] | None = None
        self.sip_log = tmp / "livekit-sip.log"
        self.env.update(livekit_dev.platform_env(self.server_config))
        self.env.update(
            {
                "OPENAI_BASE_URL": llm.base_url,  # only the lk-recorded agent uses it
                "AGENT_HEALTH_PORT": "0",
                "AGENT_JOIN_TIMEOUT_SECONDS": "15",
                "AGENT_FAULT_INJECTION": "true",
            }
        )
        self.server_proc: subprocess.Popen[Any] | None = None
        self.server_log = tmp / "livekit-server.log"

    def start(self) -> None:
        assert self.server_config is not None
        binary = livekit_dev.server_binary()
        assert binary is not None, "the tier runner checked the server binary"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.sip_config is not None:
            embedded_redis.ensure_running(self.data_dir)  # the server needs its Redis from the start
        config_path = livekit_dev.render_config(self.server_config, self.data_dir)
        self.server_proc = subprocess.Popen(
            livekit_dev.server_command(binary, config_path),
            env=livekit_dev.server_env(self.server_config, self.env),
            stdout=open(self.server_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not livekit_dev.wait_ready(self.server_config.port, 30, self.server_proc):
            raise RuntimeError(f"the LiveKit server did not start:\n{self.server_log.read_text()[-3000:]}")
        log = open(self.log_path, "w")
        demo = ["demo", "--no-traffic", "--port", str(self.port), *(() if self.demo_agent else ("--no-agent",))]
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", *demo],
            cwd=BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_port(self.port, 180, self.proc) or (self.demo_agent and not self.wait_registered(1, 180)):
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"the platform did not start; demo log:\n{tail}")
        self._add_recorded_agent()
        if self.sip_config is not None:
            self._start_sip()

    def _start_sip(self) -> None:
        assert self.sip_config is not None
        binary = livekit_dev.sip_binary()
        assert binary is not None, "the phone tests check for the SIP service's binary"
        config_path = livekit_dev.render_sip_config(self.sip_config, self.data_dir)
        self.sip_proc = subprocess.Popen(
            livekit_dev.sip_command(binary, config_path),
            env=livekit_dev.sip_env(self.env),
            stdout=open(self.sip_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not livekit_dev.sip_wait_ready(self.sip_config, 30, self.sip_proc):
            raise RuntimeError(f"LiveKit's SIP service did not start:\n{self.sip_log.read_text()[-3000:]}")

    def start_worker(self, name: str, *, mode: str = "start", env: dict[str, str] | None = None) -> AgentWorker:
        """Start one more `manage.py runagent` registered to this platform's server."""
        health_port, metrics_port = free_port(), free_port()
        log_path = self.tmp / f"worker-{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runagent", mode],
            cwd=BASE_DIR,
            env={
                **self.env,
                "AGENT_HEALTH_PORT": str(health_port),
                "AGENT_METRICS_PORT": str(metrics_port),
                **(env or {}),
            },
            stdout=open(log_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can kill the whole tree
        )
        worker = AgentWorker(name, proc, log_path, health_port, metrics_port)
        self.workers.append(worker)
        return worker

    def registrations(self) -> int:
        return self.log_path.read_text(errors="replace").count("registered with LiveKit")

    def wait_registered(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.registrations() >= count:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.5)
        return False

    def agent_pid(self) -> int:
        pids = re.findall(r"agent\s+\| started \(pid (\d+)\)", self.log_path.read_text(errors="replace"))
        return int(pids[-1])

    def manage(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def _add_recorded_agent(self) -> None:
        """An agent whose LLM is the real OpenAI plugin talking to `recording_llm`, and one
        that takes typed input."""
        self.manage(
            "shell",
            "-c",
            "from agents_app.models import Agent, Provider\n"
            "from agents_app.services import prompt_draft_create, prompt_publish\n"
            f"agent = Agent.objects.create(slug={RECORDED_AGENT!r}, name='Recorded LLM', llm_provider=Provider.OPENAI,"
            " llm_model='tier-recorded')\n"
            "v = prompt_draft_create(agent=agent, instructions='You are brief.', greeting='Hello, this is the tier.',"
            " variables={}, change_note='tier')\n"
            "prompt_publish(version=v)\n"
            # An offline agent that also takes typed messages (Agent.text_input).
            f"typed = Agent.objects.create(slug={TYPED_AGENT!r}, name='Typed input', text_input=True)\n"
            "v = prompt_draft_create(agent=typed, instructions='You are brief.', greeting='Hello, type or talk.',"
            " variables={}, change_note='tier')\n"
            "prompt_publish(version=v)\n"
            "from agents_app.runtime.simulator.credentials import simulator_keys\n"
            "simulator_keys()\n",  # the API keys the in-process callers use
        )

    def stop(self) -> int | None:
        for worker in self.workers:  # before the server, so their calls end cleanly
            worker.stop()
        code = super().stop()
        for proc in (self.sip_proc, self.server_proc):  # the SIP service first: it is the server's client
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return code

    def events(self, session_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        rows = self.query(
            "SELECT seq, type, payload FROM sessions_app_sessionevent WHERE session_id = %s ORDER BY seq",
            (session_id.replace("-", "") if not self.pg_db else session_id,),
        )
        return [
            (seq, kind, payload if isinstance(payload, dict) else json.loads(payload)) for seq, kind, payload in rows
        ]


@pytest.fixture(scope="session")
def webhook_tap() -> Iterator[WebhookTap]:
    tap = _start_tap()
    yield tap
    tap.server.shutdown()


@pytest.fixture(scope="session")
def recording_llm() -> Iterator[RecordingLLM]:
    llm = _start_llm()
    yield llm
    llm.server.shutdown()


@contextlib.contextmanager
def running_platform(platform: LiveKitPlatform) -> Iterator[LiveKitPlatform]:
    """Start the platform, hand it out, and leave no process behind whatever happened."""
    try:
        platform.start()
        yield platform
    finally:
        platform.cleanup()
        if platform.server_proc is not None and platform.server_proc.poll() is None:
            platform.server_proc.kill()


@pytest.fixture(scope="session")
def lk(tmp_path_factory: pytest.TempPathFactory, webhook_tap: WebhookTap, recording_llm: RecordingLLM):
    with running_platform(
        LiveKitPlatform(Path(tmp_path_factory.mktemp("lk")), tap=webhook_tap, llm=recording_llm)
    ) as platform:
        yield platform


# --- an in-process caller ---------------------------------------------------------------------


class Caller:
    """A client app plus its caller: the platform API, then a real room over WebRTC."""

    def __init__(self, platform: LiveKitPlatform, *, agent: str = "demo-scripted") -> None:
        self.platform = platform
        self.agent = agent
        self.api = PlatformClient(base_url=platform.base_url, api_key=platform.simulator_key())
        self.notes: list[str] = []
        self.agent_audio: list[tuple[float, float]] = []  # (monotonic time, RMS of a frame)
        self.transport = LiveKitTransport(on_agent_audio=self._on_audio, on_note=self.notes.append)
        self.session_id = ""
        self.caller_id = f"tier-{uuid.uuid4().hex[:8]}"

    def _on_audio(self, samples: np.ndarray, rate: int) -> None:
        if len(samples):
            rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
            self.agent_audio.append((time.monotonic(), rms))

    async def start(self) -> dict[str, Any]:
        created = await self.api.session_create(agent=self.agent, user_id=self.caller_id, metadata={"tier": True})
        self.session_id = self.transport.session_id = str(created["session_id"])
        await self.transport.connect(created["url"], created["token"])
        return created

    async def say(self, text: str) -> None:
        await speak(self.transport, text)

    async def agent_turn(self, timeout: float = 45) -> None:
        """Wait for the agent to speak and finish."""
        await self.transport.wait_speaking(True, timeout)
        await self.transport.wait_speaking(False, timeout * 2)

    async def leave(self) -> None:
        await self.transport.hangup()

    async def rejoin(self) -> dict[str, Any]:
        answer = await self.api.session_reconnect(self.session_id)
        await self.transport.connect(answer["url"], answer["token"])
        return answer

    async def detail(self) -> dict[str, Any]:
        return await self.api.session_get(self.session_id)

    async def wait_detail(self, predicate: Any, what: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        detail: dict[str, Any] = {}
        while time.monotonic() < deadline:
            detail = await self.detail()
            if predicate(detail):
                return detail
            await asyncio.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout:.0f} s; session: {_brief(detail)}\nnotes: {self.notes}")

    async def close(self) -> None:
        try:
            await self.transport.hangup()
        finally:
            await self.api.close()


def _brief(detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": detail.get("state"),
        "end_reason": detail.get("end_reason"),
        "turns": [(t.get("index"), t.get("user_text"), t.get("interrupted")) for t in detail.get("turns") or []],
    }


@pytest.fixture
async def caller(lk: LiveKitPlatform):
    made: list[Caller] = []

    def make(agent: str = "demo-scripted") -> Caller:
        made.append(Caller(lk, agent=agent))
        return made[-1]

    yield make
    for one in made:
        await one.close()
    if os.environ.get("LIVEKIT_TIER_KEEP_LOGS"):
        print(lk.log_tail(200))
