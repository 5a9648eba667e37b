"""Dashboard fan-out: publish → websocket receive latency through the real server.

100 live sessions each record 2 turns a second. Every turn is published exactly as
`sessions_app.turns.turn_record` publishes it: one `live.batch` (`event.added`,
`turn.completed`, `session.updated`) to the `dashboard` and `session.<id>` groups
(`broadcast.apublish_many`, as the agent's publisher thread does), and 20 dashboard
websocket clients, logged in as staff, receive them from the web server as in production
(voiceplatform.webserver: uvicorn, WEB_PROCESSES processes) over loopback. Latency is measured on `turn.completed`
from just before the publish to the client's receipt (same host, same clock).

Peer, in the same run: a bare `group_send` of the same layer messages at the same rate,
on the configured channel layer (channels-redis), to 20 plain channel-layer receivers
in this process (no Django consumer, no websocket).

Prints one JSON object: {"name": "fanout", "sessions", "dashboards", "p50_ms", "p99_ms",
"peer_p99_ms", "ratio", "dropped", ...}. `dropped` = turn messages that never reached a
client; `dropped_counted` = what the server counted in
`voice_dashboard_events_dropped_total` (gaps it saw and repaired from the DB).
Options: --sessions, --dashboards, --rate (turns/s per session), --seconds.
Uses DATABASE_URL/REDIS_URL like every process (embedded defaults when unset).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# Its own channel-layer prefix: a demo running on the same Redis neither sees nor disturbs it.
os.environ.setdefault("CHANNELS_PREFIX", f"bench{os.getpid()}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from bench.common import free_port, percentile, stop  # noqa: E402 (after the sys.path insert)

os.environ.setdefault("LOG_LEVEL", "ERROR")  # drops are counted below, not logged one by one

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

_SENT_AT = re.compile(r'"bench_sent_at": ([0-9.]+)')
WARMUP_S = 2.0
DRAIN_S = 3.0
HARD_TIMEOUT_S = 240.0


def _publish_drops() -> float:
    """Publishes `broadcast.apublish` gave up on in this process (timeouts, errors)."""
    from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED

    return sum(
        sample.value
        for family in DASHBOARD_EVENTS_DROPPED.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def _staff_cookie() -> str:
    """A logged-in staff session on the configured database (created once, reused)."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0, interactive=False)
    user, created = User.objects.get_or_create(username="bench-fanout", defaults={"is_staff": True})
    if created:
        user.set_unusable_password()
        user.save()
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def _turn_messages(session_id: str, seq: int, index: int) -> list[dict[str, Any]]:
    """What `turn_record` publishes for one turn (shapes from docs/CONTRACTS.md)."""
    now = time.time()
    stages = {
        "eou": 210.0,
        "stt": 140.0,
        "llm_ttft": 380.0,
        "tool": None,
        "tts_ttfb": 120.0,
        "ttfa": 760.0,
        "e2e": 850.0,
    }
    turn = {
        "index": index,
        "user_text": "Where is my order number four two?",
        "generated_text": "Your order left the warehouse this morning and should arrive tomorrow.",
        "heard_text": "Your order left the warehouse this morning and should arrive tomorrow.",
        "interrupted": False,
        "interrupt_source": "",
        "stages_ms": stages,
        "breaches": [],
        "tool_calls": [],
        "error": "",
        "started_at": None,
        "created_at": None,
    }
    row = {
        "id": session_id, "agent": "support", "agent_name": "Support agent", "prompt_version": 1,
        "caller_id": "bench", "room": f"room-{session_id[:12]}", "state": "active", "end_reason": "",
        "turns": index, "interrupts": 0, "reconnects": 0, "last_e2e_ms": 850.0, "created_at": None,
        "started_at": None, "ended_at": None, "seq": seq,
    }  # fmt: skip
    return [
        {"type": "event.added", "session_id": session_id, "seq": seq,
         "event": {"seq": seq, "type": "turn.completed", "payload": {"index": index}, "created_at": None}},
        {"type": "turn.completed", "session_id": session_id, "seq": seq, "turn": turn, "bench_sent_at": now},
        {"type": "session.updated", "session_id": session_id, "seq": seq, "session": row},
    ]  # fmt: skip


async def _publishers(
    publish, *, sessions: int, rate: float, seconds: float, workers: int, counter: dict[str, int]
) -> None:
    """Turns fall due at `rate` a second per session (random phases); `workers` publish them.

    A few sequential publishers, as in production, where each agent process publishes
    from its one writer task: 100 concurrent publishers would only measure a pool of
    Redis connections running dry.
    """
    queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
    started = time.monotonic()
    deadline = started + seconds
    ids = [str(uuid.uuid4()) for _ in range(sessions)]
    due = sorted((random.random() / rate, sid) for sid in ids)

    async def schedule() -> None:
        index = dict.fromkeys(ids, 0)
        pending = [(started + offset, sid) for offset, sid in due]
        period = 1.0 / rate
        while True:
            at, sid = pending.pop(0)
            if at >= deadline:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            index[sid] += 1
            queue.put_nowait((sid, index[sid]))
            # Keep the list ordered: the next turn of this session goes to the back.
            pending.append((at + period, sid))
            pending.sort()
        for _ in range(workers):
            queue.put_nowait(None)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            sid, index = item
            messages = _turn_messages(sid, index, index)
            messages[1]["bench_sent_at"] = time.time()  # the turn.completed
            counter["turns"] += 1
            await publish(sid, messages)

    await asyncio.gather(schedule(), *(worker() for _ in range(workers)))


async def _run_server_side(args: argparse.Namespace, base_url: str, cookie: str) -> dict[str, Any]:
    import aiohttp

    from sessions_app import broadcast

    latencies: list[float] = []
    received = {"turns": 0}
    window = {"from": float("inf")}  # only turns published in the measured phase count
    ready = asyncio.Event()
    connected = {"n": 0}

    async def dashboard(session: aiohttp.ClientSession) -> None:
        url = base_url.replace("http", "ws") + "/ws/dashboard/"
        async with session.ws_connect(url, headers={"Cookie": cookie, "Origin": base_url}, max_msg_size=0) as ws:
            first = json.loads((await ws.receive(timeout=30)).data)
            assert first["type"] == "snapshot", first
            connected["n"] += 1
            if connected["n"] == args.dashboards:
                ready.set()
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                # A regex, not json.loads: 20 clients share the bench's CPU with the publisher.
                # Only turn.completed messages carry bench_sent_at; a `batch` frame may hold several.
                now = time.time()
                for found in _SENT_AT.findall(frame.data):
                    sent_at = float(found)
                    if sent_at >= window["from"]:
                        received["turns"] += 1
                        latencies.append((now - sent_at) * 1000)

    async def publish(session_id: str, messages: list[dict[str, Any]]) -> None:
        await broadcast.apublish_many(broadcast.session_groups(session_id), messages)

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(dashboard(http)) for _ in range(args.dashboards)]
        await asyncio.wait_for(ready.wait(), 60)
        warm = {"turns": 0}
        await _publishers(
            publish, sessions=args.sessions, rate=args.rate, seconds=WARMUP_S, workers=args.publishers, counter=warm
        )
        await asyncio.sleep(0.5)
        window["from"] = time.time()
        drops_before = _publish_drops()
        sent = {"turns": 0}
        started = time.monotonic()
        await _publishers(
            publish, sessions=args.sessions, rate=args.rate, seconds=args.seconds, workers=args.publishers, counter=sent
        )
        publish_seconds = time.monotonic() - started
        await asyncio.sleep(DRAIN_S)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        async with http.get(base_url + "/metrics") as response:
            metrics_text = await response.text()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("voice_dashboard_events_dropped_total{")
    )
    expected = sent["turns"] * args.dashboards
    return {
        "latencies": latencies,
        "expected": expected,
        "received": received["turns"],
        "published_turns_per_s": round(sent["turns"] / publish_seconds, 1),
        "dropped_counted": int(counted),
        "dropped_at_publish": int(_publish_drops() - drops_before),
    }


async def _run_peer(args: argparse.Namespace) -> dict[str, Any]:
    """The same messages, bare `group_send` → `receive` on the channel layer."""
    from channels.layers import get_channel_layer

    from sessions_app.live.messages import live_batch, unbatch

    layer = get_channel_layer()
    group = f"benchpeer.{uuid.uuid4().hex[:8]}"
    channels = [await layer.new_channel() for _ in range(args.dashboards)]
    for channel in channels:
        await layer.group_add(group, channel)
    latencies: list[float] = []
    window = {"from": float("inf")}

    async def receiver(channel: str) -> None:
        while True:
            received = await layer.receive(channel)
            now = time.time()
            for message in unbatch(received):
                if message.get("type") == "turn.completed" and message["bench_sent_at"] >= window["from"]:
                    latencies.append((now - message["bench_sent_at"]) * 1000)

    async def publish(session_id: str, messages: list[dict[str, Any]]) -> None:
        await layer.group_send(group, live_batch(messages))

    tasks = [asyncio.create_task(receiver(channel)) for channel in channels]
    await _publishers(
        publish, sessions=args.sessions, rate=args.rate, seconds=WARMUP_S, workers=args.publishers, counter={"turns": 0}
    )
    await asyncio.sleep(0.5)
    window["from"] = time.time()
    sent = {"turns": 0}
    await _publishers(
        publish, sessions=args.sessions, rate=args.rate, seconds=args.seconds, workers=args.publishers, counter=sent
    )
    await asyncio.sleep(DRAIN_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await layer.group_discard(group, channel)
    return {"latencies": latencies, "expected": sent["turns"] * args.dashboards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--dashboards", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0, help="turns per second per session")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured publishing time per side")
    parser.add_argument("--publishers", type=int, default=4, help="concurrent publishing tasks (agent writers)")
    parser.add_argument("--processes", type=int, default=0, help="web processes (default: WEB_PROCESSES)")
    args = parser.parse_args()

    cookie = _staff_cookie()
    port = free_port()
    env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "PYTHONUNBUFFERED": "1"}
    Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
    log = open(Path(settings.DATA_DIR) / "bench-fanout-web.log", "w")  # kept open for the server's lifetime
    from voiceplatform.webserver import web_server_command

    server = subprocess.Popen(
        web_server_command(host="127.0.0.1", port=port, processes=args.processes or None),
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the web server exited; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the web server did not listen within 90 s") from None
                time.sleep(0.2)

        async def both() -> tuple[dict[str, Any], dict[str, Any]]:
            served = await _run_server_side(args, base_url, cookie)
            peer = await _run_peer(args)
            return served, peer

        served, peer = asyncio.run(asyncio.wait_for(both(), HARD_TIMEOUT_S))
    finally:
        stop(server)

    p99 = percentile(served["latencies"], 99)
    peer_p99 = percentile(peer["latencies"], 99)
    result = {
        "name": "fanout",
        "sessions": args.sessions,
        "dashboards": args.dashboards,
        "p50_ms": percentile(served["latencies"], 50),
        "p99_ms": p99,
        "peer_p50_ms": percentile(peer["latencies"], 50),
        "peer_p99_ms": peer_p99,
        "ratio": round(p99 / peer_p99, 2) if p99 and peer_p99 else None,
        "dropped": max(0, served["expected"] - served["received"]),
        "dropped_counted": served["dropped_counted"],
        "dropped_at_publish": served["dropped_at_publish"],
        "delivered": served["received"],
        "expected": served["expected"],
        "peer_dropped": max(0, peer["expected"] - len(peer["latencies"])),
        "published_turns_per_s": served["published_turns_per_s"],
        "messages_per_turn": 3,
        "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
        "web_processes": args.processes or settings.WEB_PROCESSES,
        "seconds": args.seconds,
        "target_p99_ms": 50,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
