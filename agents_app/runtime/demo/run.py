"""`manage.py demo`'s run: the whole platform plus simulated traffic, supervised.

It migrates, seeds the demo data, then starts and supervises (agents_app/runtime/demo/supervisor.py)
the web server, Celery, a LiveKit server when the demo starts one
(agents_app/runtime/demo/transport.py), the agent worker, `manage.py doctor` once the worker and
Celery are up, and a steady trickle of `simulate_calls`. The command
(agents_app/runtime/management/commands/demo.py) describes it for the user.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from agents_app.runtime.demo.supervisor import RestartBudget, Supervisor, port_free, wait_port, wait_ready
from agents_app.runtime.demo.transport import TransportPlan, banner, start_livekit, transport_plan
from agents_app.runtime.providers import local_llm
from voiceplatform import livekit_dev
from voiceplatform.webserver import web_server_command

DEFAULT_TRAFFIC = ("conversation", "basic", "barge-in", "reconnect", "tool", "client-interrupt", "agent-restart")
# The doctor runs once the agent worker and Celery are up, or after this long regardless.
DOCTOR_WAIT_S = 180.0


def _process_started_at() -> float:
    """When this process started (to tell whether the embedded Redis is ours)."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time()


_STARTED_AT = _process_started_at()


def run_demo(options: dict[str, Any], *, stdout: Any) -> None:
    """Check the ports, migrate and seed, start every process, and supervise them until
    Ctrl-C, SIGTERM, `options["duration"]` or a process that dies (a crashed agent worker
    is started again, within a budget); then stop everything. `options` are the
    command's; `stdout` is where the steps and the banner go."""
    host, port = options["host"], options["port"]
    base_url = f"http://{host}:{port}"
    plan = transport_plan(options["transport"], webhook_url=f"{base_url}{livekit_dev.WEBHOOK_PATH}")
    busy = [("web server", host, port)]
    if plan.kind == "local" and not options.get("no_agent"):
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

    stdout.write("==> migrating the database")
    call_command("migrate", interactive=False, verbosity=0)
    stdout.write("==> seeding the demo data")
    call_command("seed_demo", base_url=base_url, stdout=stdout)
    redis_ours = embedded_redis_is_ours()

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
            start_livekit(supervisor, plan, env)
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
        if plan.kind == "local" or options.get("no_agent"):
            # Local callers wait for the agent host's port themselves; with --no-agent the
            # workers are someone else's, and a call dispatched early is dispatched again.
            registered.set()
        if not options.get("no_agent"):
            supervisor.start("agent", agent_argv, env)
        if not wait_port(host, port, 60):
            raise CommandError(f"the web server did not start listening on {host}:{port} within 60 s")
        for line in banner(base_url, plan, real_model):
            stdout.write(line)
        stdout.flush()
        if not options.get("no_agent"):  # the doctor's dispatch probe needs a worker
            threading.Thread(
                target=start_doctor, args=(supervisor, env, plan, stop, registered, celery_ready), daemon=True
            ).start()
        if not options["no_traffic"]:
            traffic = threading.Thread(
                target=run_traffic,
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


def embedded_redis_is_ours() -> bool:
    """The embedded Redis was started by this run (its pid file is newer than us)."""
    if not settings.EMBEDDED_REDIS:
        return False
    pid_file = Path(settings.DATA_DIR) / "redis.pid"
    try:
        return pid_file.stat().st_mtime >= _STARTED_AT - 1
    except OSError:
        return False


def start_doctor(
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
    if not wait_ready(lambda: agent_up() and celery_ready.is_set(), stop, DOCTOR_WAIT_S):
        return
    supervisor.start("doctor", [sys.executable, "manage.py", "doctor", "--probe-timeout", "30"], env)


def run_traffic(
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
    if not wait_ready(agent_ready.is_set, stop, 120):
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
        sim = f"sim-{number % 100:02d}"
        proc = supervisor.start(sim, argv, env)
        if proc is None:
            return
        while proc.poll() is None:
            if stop.wait(0.5):
                return  # stop_all kills its group
        supervisor.forget(sim, proc)
        if stop.wait(pause):
            return
