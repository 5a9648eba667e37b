"""`manage.py demo` (what `make demo` runs): the whole platform plus simulated traffic.

It migrates, seeds the demo data, then starts and supervises, each in its own process
group with prefixed coloured output:

- web:     uvicorn (voiceplatform.webserver) on 127.0.0.1:8000 (admin, API, dashboard, websockets, /metrics)
- celery:  a Celery worker with beat (post-call reports, reaper, slow tools)
- agent:   `manage.py runagent` (the local agent host when LIVEKIT_URL is unset)
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
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from voiceplatform.webserver import web_server_command

DEFAULT_TRAFFIC = ("basic", "barge-in", "reconnect", "tool", "client-interrupt", "agent-restart")
GRACE_SECONDS = 10.0
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

    def dead(self) -> list[tuple[str, int]]:
        return [(name, proc.returncode) for name, proc in self.procs.items() if proc.poll() is not None]

    @staticmethod
    def kill_group(proc: subprocess.Popen[str], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping.set()
        procs = list(self.procs.items())
        for _, proc in procs:
            self.kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for name, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(name, "did not stop in time: killing its process group")
            # Children of the leader (job processes, Celery's pool) may outlive it.
            self.kill_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


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

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        base_url = f"http://{host}:{port}"
        for what, h, p in (
            ("web server", host, port),
            ("local agent host", settings.LOCAL_AGENT_HOST, settings.LOCAL_AGENT_PORT),
        ):
            if settings.LIVEKIT_URL and what == "local agent host":
                continue
            if not port_free(h, p):
                raise CommandError(f"{h}:{p} (the {what}) is already in use: is another demo running? Stop it first.")

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
            supervisor.start("web", web_server_command(host=host, port=port, python=py), env)
            supervisor.start(
                "celery",
                [py, "-m", "celery", "-A", "voiceplatform", "worker", "-B", "--concurrency", "1", "--loglevel", "INFO",
                 "-s", str(Path(settings.DATA_DIR) / "celerybeat-schedule")],
                env,
            )  # fmt: skip
            supervisor.start("agent", [py, "manage.py", "runagent"], env)
            if not wait_port(host, port, 60):
                raise CommandError(f"the web server did not start listening on {host}:{port} within 60 s")
            self._banner(base_url)
            if not options["no_traffic"]:
                traffic = threading.Thread(
                    target=self._traffic,
                    args=(supervisor, env, base_url, options["scenarios"].split(","), options["pause"], stop),
                    daemon=True,
                )
                traffic.start()
            deadline = time.monotonic() + options["duration"] if options["duration"] else None
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                dead = [(n, rc) for n, rc in supervisor.dead() if n in ("web", "celery", "agent")]
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
            supervisor.stop_all()
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

    def _banner(self, base_url: str) -> None:
        from agents_app.management.commands.seed_demo import DEMO_PASSWORD

        lines = [
            "",
            "=" * 64,
            f"  Dashboard:  {base_url}/dashboard/",
            f"  Login:      staff / {DEMO_PASSWORD}   (admin / {DEMO_PASSWORD} for the admin)",
            f"  Admin:      {base_url}/admin/   (edit the prompt: the next calls change)",
            f"  API docs:   {base_url}/api/v1/docs",
            "  Ctrl-C stops everything.",
            "=" * 64,
            "",
        ]
        for line in lines:
            self.stdout.write(line)
        self.stdout.flush()

    def _traffic(
        self,
        supervisor: Supervisor,
        env: dict[str, str],
        base_url: str,
        scenario_names: list[str],
        pause: float,
        stop: threading.Event,
    ) -> None:
        """One simulated call at a time, cycling through the scenarios, until stopped.

        The first caller starts while the agent host still loads its models (it waits for
        the host to accept), so the dashboard shows a call as early as possible.
        """
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
