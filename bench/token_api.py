"""Token API: POST /api/v1/sessions on the platform vs FastAPI doing the same work (issue 18).

The platform is started as in production (voiceplatform.webserver: gunicorn with
WEB_PROCESSES uvicorn workers, default 2, serving voiceplatform.asgi:application;
`--processes N` measures other counts). The peer is a FastAPI app on the same kind of
server (gunicorn, the same number of uvicorn workers) that does the same work per request
by calling the same code: the API-key lookup, the Redis rate limit (raised out of the way
here) and `session_create` (the owner's live-session cap inside the one INSERT of the
session and its events, the pinned prompt version, the token, the publish to the channel
layer). So the ratio is the cost of the web framework around the work: Django's
middleware, django-ninja and the WSGI bridge, against FastAPI. A sweeper ends the bench
client's sessions as a real client's calls end.

Both are driven over loopback in the same run with the same load:
1. throughput: a closed loop of --concurrency clients for --seconds, --rounds times per
   side, alternating platform and peer (both servers stay up) → median *_rps;
2. latency: an open loop at --rate requests/s for --seconds → *_p50_ms / *_p99_ms.

Prints one JSON object: {"name": "token_api", "platform_rps", "peer_rps", "ratio",
"platform_p50_ms", "platform_p99_ms", "peer_p99_ms", ...}. Never asserts: timings are
for comparison (target: ratio >= 0.8, platform p99 <= 50 ms at 150 req/s on 2 cores).
Uses DATABASE_URL/REDIS_URL like every process (embedded defaults when unset); the rows
it creates are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from bench.common import free_port, percentile, stop  # noqa: E402 (after the sys.path insert)

os.environ.setdefault("LOG_LEVEL", "ERROR")
os.environ.setdefault("CHANNELS_PREFIX", f"bench{os.getpid()}")
# Session creation is rate-limited per client; the benchmark measures the work, not the limiter's 429s.
os.environ["SESSION_CREATE_RATE_PER_MINUTE"] = "100000000"
# Development defaults for the servers it starts (no DJANGO_SECRET_KEY needed).
os.environ.setdefault("VOICE_DEV_DEFAULTS", "true")

AGENT_SLUG = "bench-token-api"
CLIENT_NAME = "bench-token-api"


# --- the peer: FastAPI on the same server, doing the same work ---------------------------------


class CreateIn(BaseModel):
    agent: str
    user_id: str
    metadata: dict[str, Any] = {}


def build_peer_app() -> Any:
    """The same request, the same work, through FastAPI instead of Django + django-ninja.

    It calls what the platform's view calls: the API-key lookup (`api_client_authenticate`,
    with its per-process cache), the Redis rate limit, and `session_create` (the owner's
    live-session cap inside the one INSERT of the session and its events, the token, the
    publish to the channel layer). What differs is only the web framework around them:
    Django's middleware, django-ninja's parsing and auth, and the WSGI bridge.
    """
    import django

    django.setup()
    from django.db import connection
    from fastapi import FastAPI, Header, HTTPException

    from sessions_app.models import ApiScope
    from sessions_app.ratelimit import session_create_rate_check
    from sessions_app.services import api_client_authenticate, session_create
    from sessions_app.tokens import client_url

    app = FastAPI()

    @app.post("/sessions", status_code=201)
    def create(body: CreateIn, authorization: str = Header("")) -> dict[str, Any]:  # runs in FastAPI's threadpool
        try:
            client = api_client_authenticate(key=authorization.removeprefix("Bearer ").strip())
            if client is None:
                raise HTTPException(401, "unknown API key")
            if client.scope != ApiScope.CLIENT:
                raise HTTPException(403, "insufficient scope")
            if not session_create_rate_check(subject=f"client:{client.key_prefix}").allowed:
                raise HTTPException(429, "rate limited")
            session, token = session_create(
                agent_slug=body.agent, caller_id=body.user_id, metadata=body.metadata, api_client=client
            )
        finally:
            # Back to the pool (DB_POOL), as Django does when its request finishes.
            connection.close()
        return {
            "session_id": str(session.id),
            "room": session.room_name,
            "url": client_url(),
            "token": token.token,
            "expires_at": token.expires_at.isoformat(),
        }

    return app


# --- driver ------------------------------------------------------------------------------------


def _setup() -> str:
    """Migrate, and make the bench agent (published prompt) and API client; return the key."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from agents_app.models import Agent
    from agents_app.services import prompt_draft_create, prompt_publish
    from sessions_app.services import api_client_create

    agent, created = Agent.objects.get_or_create(slug=AGENT_SLUG, defaults={"name": "Token API bench"})
    if created or not agent.prompt_versions.filter(status="published").exists():
        prompt_publish(version=prompt_draft_create(agent=agent, instructions="Benchmark agent."))
    _cleanup()  # rows a killed earlier run left behind
    _, key = api_client_create(name=CLIENT_NAME)
    return key


class _Sweeper:
    """Ends the bench client's sessions as fast as they are made (every 20 ms).

    Every creation checks the owner's live sessions against MAX_LIVE_SESSIONS_PER_OWNER
    (production default, 100) inside its INSERT. A real client's sessions end as calls
    end; without this the bench's would pile up and be refused at the cap. The UPDATEs
    run on the same PostgreSQL, as a real client's ends would.
    """

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from sessions_app.models import ApiClient, VoiceSession

        client_id = ApiClient.objects.get(name=CLIENT_NAME).pk
        while not self._stop.wait(0.02):
            VoiceSession.objects.filter(api_client_id=client_id, state="created").update(state="ended")
        connection.close()

    def __enter__(self) -> _Sweeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _cleanup() -> None:
    from sessions_app.models import ApiClient, VoiceSession

    VoiceSession.objects.filter(agent__slug=AGENT_SLUG).delete()
    ApiClient.objects.filter(name=CLIENT_NAME).delete()


def _start_platform(port: int, processes: int, db_pool: bool) -> list[subprocess.Popen]:
    py = sys.executable
    env = dict(os.environ)
    if db_pool:
        # Each web thread would otherwise keep its own PostgreSQL connection. See docs/api.md.
        env["DB_POOL"] = "1"
    from voiceplatform.webserver import web_server_command  # as in production (Procfile, manage.py demo)

    cmd = web_server_command(host="127.0.0.1", port=port, processes=processes, python=py)
    return [subprocess.Popen(cmd, cwd=BASE_DIR, stdout=subprocess.DEVNULL, env=env)]


def _start_peer(port: int, processes: int, db_pool: bool) -> list[subprocess.Popen]:
    """The peer on the same kind of server: gunicorn, the same number of uvicorn workers."""
    env = dict(os.environ, **({"DB_POOL": "1"} if db_pool else {}))
    cmd = [
        sys.executable, "-m", "gunicorn", "--workers", str(processes), "--worker-class", "uvicorn_worker.UvicornWorker",
        "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--log-level", "warning",
        "--pythonpath", str(Path(__file__).resolve().parent), "token_api:build_peer_app()",
    ]  # fmt: skip
    return [subprocess.Popen(cmd, cwd=BASE_DIR, stdout=subprocess.DEVNULL, env=env)]


async def _wait_up(url: str, headers: dict[str, str], body: bytes, timeout: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status == 201:
                        return
                    raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not start")


async def _closed_loop(url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

    done = errors = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 201:
                        done += 1
                    else:
                        errors += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    return {"rps": round(done / elapsed, 1), "errors": errors}


async def _open_loop(url: str, headers: dict[str, str], body: bytes, rate: float, seconds: float) -> dict:
    """Requests start on a fixed schedule whatever the server does (no coordinated omission)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(scheduled: float) -> None:
            nonlocal errors
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 201
            except aiohttp.ClientError:
                ok = False
            # Measured from the scheduled start: a late start counts against the server.
            if ok:
                latencies.append((time.monotonic() - scheduled) * 1000)
            else:
                errors += 1

        start = time.monotonic() + 0.2
        await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": errors,
        "completed": len(latencies),
    }


async def _measure(targets: dict[str, tuple[str, dict[str, str]]], args: argparse.Namespace) -> dict[str, dict]:
    """Both servers are up; their phases alternate so that drift on a shared machine hits both.

    Throughput: --rounds closed-loop rounds per side (platform, peer, platform, …), the
    median reported. Latency: one open-loop phase per side at --rate.
    """
    body = json.dumps({"agent": AGENT_SLUG, "user_id": "bench-caller", "metadata": {"plan": "gold"}}).encode()
    targets = {side: (url, {**headers, "Content-Type": "application/json"}) for side, (url, headers) in targets.items()}
    for url, headers in targets.values():
        await _wait_up(url, headers, body)
        await _closed_loop(url, headers, body, args.concurrency, args.warmup)  # warm connections and caches
    rounds: dict[str, list[dict]] = {side: [] for side in targets}
    for _ in range(args.rounds):
        for side, (url, headers) in targets.items():
            rounds[side].append(await _closed_loop(url, headers, body, args.concurrency, args.seconds))
            await asyncio.sleep(0.5)
    results = {}
    for side, (url, headers) in targets.items():
        latency = await _open_loop(url, headers, body, args.rate, args.seconds)
        await asyncio.sleep(0.5)
        rps = sorted(r["rps"] for r in rounds[side])
        results[side] = {
            **latency,
            "rps": rps[len(rps) // 2],
            "rps_rounds": [r["rps"] for r in rounds[side]],
            "errors": sum(r["errors"] for r in rounds[side]) + latency["errors"],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=0, help="web processes (default: WEB_PROCESSES)")
    parser.add_argument("--rate", type=float, default=150.0, help="open-loop requests/s for the latency phase")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients for the throughput phase")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds per side (median)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--db-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the platform with DB_POOL=1 (PostgreSQL only)",
    )
    args = parser.parse_args()
    db_pool = args.db_pool and os.environ.get("DATABASE_URL", "").startswith("postgres")
    key = _setup()
    from django.conf import settings

    processes = args.processes or settings.WEB_PROCESSES
    platform_port, peer_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs += _start_platform(platform_port, processes, db_pool)
        procs += _start_peer(peer_port, processes, db_pool)
        with _Sweeper():
            results = asyncio.run(
                _measure(
                    {
                        "platform": (
                            f"http://127.0.0.1:{platform_port}/api/v1/sessions",
                            {"Authorization": f"Bearer {key}"},
                        ),
                        "peer": (f"http://127.0.0.1:{peer_port}/sessions", {"Authorization": f"Bearer {key}"}),
                    },
                    args,
                )
            )
    finally:
        stop(*procs)
        _cleanup()

    platform, peer = results["platform"], results["peer"]
    print(
        json.dumps(
            {
                "name": "token_api",
                "platform_rps": platform["rps"],
                "peer_rps": peer["rps"],
                "ratio": round(platform["rps"] / peer["rps"], 3) if peer["rps"] else None,
                "platform_p50_ms": platform["p50_ms"],
                "platform_p99_ms": platform["p99_ms"],
                "peer_p99_ms": peer["p99_ms"],
                "peer_p50_ms": peer["p50_ms"],
                "platform_rps_rounds": platform["rps_rounds"],
                "peer_rps_rounds": peer["rps_rounds"],
                "rate": args.rate,
                "server": "gunicorn+uvicorn-worker",
                "processes": processes,
                "threads": settings.WEB_THREADS,
                "peer_processes": processes,
                "db_pool": db_pool,
                "errors": {"platform": platform["errors"], "peer": peer["errors"]},
                "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite",
            }
        )
    )


if __name__ == "__main__":
    main()
