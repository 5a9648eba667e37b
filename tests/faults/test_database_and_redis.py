"""Faults of the platform's own infrastructure during live calls (issue 20), against real
processes: the platform as `make demo` runs it, on a PostgreSQL cluster and a Redis of its
own (tests/faults/platform.py), with a simulated caller talking to it.

- PostgreSQL restarted mid-call: the API answers 503 with Retry-After while it is down; the
  agent's writer retries, and every turn and event is stored once, in order.
- Redis killed mid-call: sessions are still created (the rate limiter fails open); the call
  goes on and its turns are stored; a session page that was open catches up without a gap
  once Redis is back; a report whose enqueue was lost is produced later by the backfill.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.platform import BASE_DIR, StaffListener, staff_http, started
from tests.faults.infra import postgres_bin_dir
from tests.faults.platform import FAULT_CALL_TURNS, FaultPlatform, check_nothing_lost_or_doubled

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.timeout(900)]

OUTAGE_SECONDS = 6.0

if postgres_bin_dir() is None:
    if os.environ.get("CI"):
        raise RuntimeError("the fault tests need PostgreSQL's server binaries (.ci/run installs them)")
    pytest.skip("no PostgreSQL server binaries here (Debian's postgresql package)", allow_module_level=True)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultPlatform]:
    running = FaultPlatform(
        Path(tmp_path_factory.mktemp("faults")),
        # The report backfill runs often here, so a lost enqueue is repaired within the test.
        extra_env={"REPORT_BACKFILL_EVERY_SECONDS": "5", "REPORT_BACKFILL_AFTER_SECONDS": "3"},
    )
    with started(running):
        yield running


class Call:
    """One simulated call (`simulate_calls --scenario fault-call`) in a subprocess."""

    def __init__(self, platform: FaultPlatform) -> None:
        self.platform = platform
        self.proc: asyncio.subprocess.Process | None = None
        self.session_id = ""

    async def start(self) -> None:
        before = self.platform.latest_session_id()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", "simulate_calls", "--json", "--base-url", self.platform.base_url,
            "--calls", "1", "--scenario", str(self.platform.scenario_path),
            cwd=BASE_DIR, env=self.platform.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(600):
            latest = self.platform.latest_session_id()
            if latest and latest != before:
                self.session_id = latest
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the simulated call created no session")

    async def wait_turns(self, count: int, timeout: float = 120) -> None:
        for _ in range(int(timeout * 10)):
            if self.platform.turn_count(self.session_id) >= count:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"fewer than {count} turns stored within {timeout} s\nplatform log:\n{self.platform.log_tail(80)}"
        )

    async def finish(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        output = (await asyncio.wait_for(self.proc.stdout.read(), timeout)).decode(errors="replace")
        await self.proc.wait()
        lines = output.strip().splitlines()
        try:
            summary = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise AssertionError(f"simulate_calls printed no JSON:\n{output[-4000:]}") from None
        assert summary["completed"] == 1 and summary["failed"] == 0, (
            f"{summary['errors']}\n{output[-4000:]}\nplatform errors:\n{self.platform.server_errors()}"
        )
        return summary


async def _api(
    platform: FaultPlatform, method: str, path: str, body: Any = None, *, retry_unavailable: bool = False
) -> tuple[int, dict[str, str], Any]:
    """One API call. With `retry_unavailable`, a 503 with Retry-After is retried as a client
    app does (a web process's pooled connection that the PostgreSQL restart of the previous
    test broke fails one request with it)."""
    headers = {"Authorization": f"Bearer {platform.simulator_key()}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(6):
            async with http.request(method, f"{platform.base_url}/api/v1{path}", json=body, headers=headers) as answer:
                status, answer_headers, data = answer.status, dict(answer.headers), await answer.json(content_type=None)
            if not (retry_unavailable and status == 503 and "Retry-After" in answer_headers):
                break
            await asyncio.sleep(min(float(answer_headers["Retry-After"]), 5.0))
        return status, answer_headers, data


async def test_postgres_restarted_mid_call_loses_and_doubles_nothing(platform: FaultPlatform) -> None:
    call = Call(platform)
    await call.start()
    await call.wait_turns(2)

    down_at = datetime.now(UTC)
    platform.pg.stop()
    try:
        # While it is down: 503 with Retry-After from every endpoint, never a 500.
        status, headers, body = await _api(platform, "POST", "/sessions", {"agent": "demo-scripted", "user_id": "u"})
        assert status == 503 and body["code"] == "database_unavailable", (status, body)
        assert int(headers["Retry-After"]) > 0
        status, headers, _ = await _api(platform, "GET", f"/sessions/{call.session_id}")
        assert status == 503 and "Retry-After" in headers
        await asyncio.sleep(OUTAGE_SECONDS)  # the caller keeps talking meanwhile
    finally:
        platform.pg.start()
        up_at = datetime.now(UTC)

    await call.finish()
    stored = platform.stored(call.session_id)
    assert check_nothing_lost_or_doubled(stored, min_turns=FAULT_CALL_TURNS) == [], stored
    # The outage did hit the agent's writer: turns spoken while the database was down were
    # held (a pool connection wait, or retries: voice_recorder_retries_total) and stored after.
    spoken_during = platform.query(
        "SELECT count(*) FROM sessions_app_turn WHERE session_id=%s AND started_at BETWEEN %s AND %s",
        (call.session_id, down_at, up_at),
    )[0][0]
    assert spoken_during >= 1, "no turn was spoken during the outage: the test did not test it"
    # And the API serves again (a connection the restart broke fails one request at most).
    for _ in range(5):
        status, _, _ = await _api(platform, "GET", f"/sessions/{call.session_id}")
        if status == 200:
            break
    assert status == 200


class SessionPage(StaffListener):
    """A support person's session page: logs in, follows /ws/sessions/<id>/, and does what
    the page's script does: reconnects with ?after_seq=<last seq> when the socket drops,
    and asks for a resync when an event's seq jumps."""

    def __init__(self, platform: FaultPlatform, session_id: str) -> None:
        super().__init__()
        self.platform = platform
        self.session_id = session_id
        self.seqs: set[int] = set()
        self.last_seq = 0
        self.reconnects = 0
        self.resyncs = 0

    async def __aenter__(self) -> SessionPage:
        self._http = await staff_http(self.platform.base_url)
        self._task = asyncio.create_task(self._follow())
        for _ in range(200):
            if self.last_seq:
                return self
            await asyncio.sleep(0.1)
        raise AssertionError("the session page got no snapshot")

    def _take(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.seqs.add(int(event["seq"]))
        if self.seqs:
            self.last_seq = max(self.last_seq, max(self.seqs))

    async def _follow(self) -> None:
        assert self._http is not None
        url = f"ws://127.0.0.1:{self.platform.port}/ws/sessions/{self.session_id}/"
        while True:
            query = f"?after_seq={self.last_seq}" if self.last_seq else ""
            try:
                async with self._http.ws_connect(url + query, headers={"Origin": self.platform.base_url}) as ws:
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        frame = message.json()
                        for item in frame["messages"] if frame.get("type") == "batch" else [frame]:
                            await self._handle(ws, item)
            except (aiohttp.ClientError, OSError):
                pass
            self.reconnects += 1
            await asyncio.sleep(0.5)

    async def _handle(self, ws: aiohttp.ClientWebSocketResponse, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "snapshot":
            self._take(item["events"])
            self.last_seq = max(self.last_seq, int(item["seq"]))
        elif kind == "resync":
            self.resyncs += 1
            self._take(item["events"])
            if not item["complete"]:
                await ws.send_json({"type": "resync", "session_id": self.session_id, "after_seq": self.last_seq})
        elif kind == "event.added":
            seq = int(item["event"]["seq"]) if "event" in item else int(item["seq"])
            if seq > self.last_seq + 1:
                await ws.send_json({"type": "resync", "session_id": self.session_id, "after_seq": self.last_seq})
            else:
                self._take([{"seq": seq}])


async def test_redis_killed_mid_call_keeps_calls_going_and_nothing_is_missed(platform: FaultPlatform) -> None:
    call = Call(platform)
    await call.start()
    await call.wait_turns(2)
    async with SessionPage(platform, call.session_id) as page:
        turns_before = platform.turn_count(call.session_id)
        platform.redis.stop()
        try:
            # Fail-open: a client still gets a session and its token with Redis down.
            status, _, created = await _api(
                platform,
                "POST",
                "/sessions",
                {"agent": "demo-scripted", "user_id": "during-outage"},
                retry_unavailable=True,
            )
            assert status == 201 and created["token"], (status, created)
            # It ends at once: its post-call report cannot be queued now (the broker is down).
            status, _, _ = await _api(
                platform, "POST", f"/sessions/{created['session_id']}/end", retry_unavailable=True
            )
            assert status == 200
            # The caller keeps talking: Redis stays down until a turn was stored meanwhile.
            await asyncio.sleep(OUTAGE_SECONDS)
            await call.wait_turns(turns_before + 1, timeout=90)
        finally:
            platform.redis.start()

        await call.finish()
        stored = platform.stored(call.session_id)
        assert check_nothing_lost_or_doubled(stored, min_turns=FAULT_CALL_TURNS) == [], stored
        # The open page holds every event once Redis is back (repaired by resync or reconnect).
        for _ in range(200):
            if page.seqs >= set(stored["seqs"]):
                break
            await asyncio.sleep(0.1)
        missing = sorted(set(stored["seqs"]) - page.seqs)
        assert missing == [], f"the session page never got events {missing} (reconnects {page.reconnects})"

    # The report of the session that ended during the outage is produced by the backfill.
    for _ in range(900):
        rows = platform.query(
            "SELECT report IS NOT NULL FROM sessions_app_voicesession WHERE id=%s", (created["session_id"],)
        )
        if rows and rows[0][0]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no report for the session ended during the outage\n{platform.server_errors()}")
