"""Fault: a web process SIGKILLed while dashboards watch and clients call the API.

Two web servers as in production (gunicorn + uvicorn worker, the Procfile's `web:` line,
tests/browser/conftest.py) on free loopback ports, sharing one database and one Redis
(the Channels layer). What must hold (docs/reliability.md, "Web process killed"):

- a session page's socket on web A, A SIGKILLed while events keep coming: the page
  reconnects to web B with its last seq and gets every event exactly once, in order,
  without a gap (the resync from the DB, then the live stream);
- no API request is half-applied: a session is created with all of its first events or
  not at all, whether the database fails inside the write or the web process is killed
  while the write is under way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.browser.conftest import ServedPlatform, serve_platform, start_web_server, stop_platform
from tests.processes import stop_group

pytestmark = pytest.mark.faults

EVENTS_BEFORE_KILL = 15
EVENTS_IN_ALL = 60
EVENT_INTERVAL_S = 0.05

SEED = """
from django.contrib.auth.models import Group, User
from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
support = User.objects.create_user("support", "support@example.com", "support-pass-123")
support.groups.add(Group.objects.get_or_create(name="Support staff")[0])
agent = Agent.objects.create(slug="support", name="Support agent")
prompt_publish(version=prompt_draft_create(agent=agent, instructions="Be brief.", greeting="", variables={}, change_note=""))
"""


class TwoWebServers:
    def __init__(self, site: ServedPlatform, b: subprocess.Popen, b_port: int) -> None:
        self.a = site
        self.b = b
        self.b_url = f"http://127.0.0.1:{b_port}"

    def sigkill_a(self) -> None:
        os.killpg(self.a.process.pid, signal.SIGKILL)  # the gunicorn master and its worker
        self.a.process.wait(timeout=30)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[TwoWebServers]:
    data_dir = tmp_path_factory.mktemp("webkill")
    # A channel-layer prefix of this run's own: nothing else on a shared Redis is mixed in.
    site = serve_platform(
        data_dir, name="webkill", seed=SEED, env_extra={"CHANNELS_PREFIX": f"wk{uuid.uuid4().hex[:8]}"}
    )
    b, b_port, _log = start_web_server(site.env, data_dir, name="webkill-b")
    try:
        yield TwoWebServers(site, b, b_port)
    finally:
        stop_group(b, grace=30)
        stop_platform(site)


def _support_cookie(site: ServedPlatform) -> str:
    return site.orm(
        """
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
client = Client()
client.force_login(User.objects.get(username="support"))
result = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
"""
    )


def _new_session(site: ServedPlatform) -> str:
    """A session created through the service, as the API does (its first events with it)."""
    return site.orm(
        """
from django.contrib.auth.models import User
from sessions_app.services import session_create
session, _token = session_create(agent_slug="support", caller_id="fault-caller", user=User.objects.get(username="support"))
result = str(session.id)
"""
    )


def _seqs_of(frame: dict[str, Any], session_id: str) -> list[int]:
    """The event seqs a frame delivers to the page."""
    kind = frame.get("type")
    if kind == "batch":
        return [seq for inner in frame["messages"] for seq in _seqs_of(inner, session_id)]
    if kind == "event.added" and frame["session_id"] == session_id:
        return [frame["seq"]]
    if kind in ("snapshot", "resync"):
        return [event["seq"] for event in frame.get("events", [])]
    return []


async def _watch(
    url: str,
    cookie: str,
    origin: str,
    received: list[int],
    session_id: str,
    until: int,
    first_frame: dict[str, Any] | None = None,
) -> str:
    """Read a session socket, appending every delivered seq, until seq `until` or the socket
    dies; returns why it stopped. `first_frame` gets the first frame's type, size and time."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Cookie": cookie, "Origin": origin}, heartbeat=None) as ws,
    ):
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if first_frame is not None and not first_frame:
                first_frame.update(type=frame.get("type"), events=len(_seqs_of(frame, session_id)), at=time.monotonic())
            if frame.get("type") == "resync" and not frame["complete"]:
                await ws.send_json({"type": "resync", "session_id": session_id, "after_seq": frame["seq"]})
            received.extend(_seqs_of(frame, session_id))
            if received and received[-1] >= until:
                return "done"
        return f"closed ({ws.close_code})"


def test_a_killed_web_process_leaves_a_watching_page_to_resync_on_another_without_a_gap(servers):
    site = servers.a
    cookie = _support_cookie(site)
    session_id = _new_session(site)
    first_seq = site.orm(
        f"from sessions_app.models import VoiceSession\nresult = VoiceSession.objects.get(pk='{session_id}').last_seq"
    )
    final_seq = first_seq + EVENTS_IN_ALL
    received: list[int] = []
    timeline: dict[str, float] = {}
    first_on_b: dict[str, Any] = {}

    produced = [first_seq]

    def produce(start: int, stop: int) -> None:
        for n in range(start, stop):
            site.orm(
                f"from sessions_app.services import session_event_append\n"
                f"session_event_append(session_id='{session_id}', type='agent.note', payload={{'n': {n}}})"
            )
            produced[0] += 1
            time.sleep(EVENT_INTERVAL_S)

    async def scenario() -> None:
        path = f"/ws/sessions/{session_id}/"
        on_a = asyncio.create_task(
            _watch(site.base_url.replace("http", "ws") + path, cookie, site.base_url, received, session_id, final_seq)
        )
        # Events while the page watches web A; keep producing through the kill.
        producer = asyncio.create_task(asyncio.to_thread(produce, 0, EVENTS_IN_ALL))
        while len(received) < first_seq + EVENTS_BEFORE_KILL:
            await asyncio.sleep(0.02)
            assert not on_a.done(), await on_a
        servers.sigkill_a()
        timeline["killed"] = time.monotonic()
        assert (await asyncio.wait_for(on_a, 30)).startswith("closed")
        last = received[-1]
        timeline["seen_before_kill"] = last
        timeline["produced_at_kill"] = produced[0]
        # The page reconnects (to the other server behind the balancer) with its last seq.
        url_b = servers.b_url.replace("http", "ws") + path + f"?after_seq={last}"
        watch_b = _watch(url_b, cookie, servers.b_url, received, session_id, final_seq, first_frame=first_on_b)
        assert await asyncio.wait_for(watch_b, 120) == "done"
        await asyncio.wait_for(producer, 120)

    asyncio.run(scenario())

    assert received == list(range(1, final_seq + 1))  # each event once, in order, none missing
    stored = site.orm(
        f"from sessions_app.models import SessionEvent\n"
        f"result = list(SessionEvent.objects.filter(session_id='{session_id}').order_by('seq').values_list('seq', flat=True))"
    )
    assert stored == received
    assert timeline["seen_before_kill"] < final_seq  # the kill really came mid-stream
    assert first_on_b["type"] == "resync"  # B first replays what the page missed, from the DB
    print(
        "\nFIGURES "
        + json.dumps(
            {
                "fault": "web_process_killed",
                "events": len(received),
                "seen_on_a": timeline["seen_before_kill"],
                "replayed_by_resync_on_b": first_on_b["events"],
                "live_on_b": len(received) - timeline["seen_before_kill"] - first_on_b["events"],
                "kill_to_resync_s": round(first_on_b["at"] - timeline["killed"], 2),
            }
        )
    )


# --- no API request half-applied ------------------------------------------------------------------

SLOW_CALLER = "slow-caller"
SLOW_INSERT_S = 4

# The database itself holds the session's first event insert for a while, for one caller
# only: no hook in the platform. The session row is already written by then, inside the
# same statement.
_SLOW_EVENT_TRIGGER = f"""
CREATE OR REPLACE FUNCTION fault_slow_first_event() RETURNS trigger AS $$
BEGIN
  IF NEW.type = 'session.created' AND NEW.payload->>'caller_id' = '{SLOW_CALLER}' THEN
    PERFORM pg_sleep({SLOW_INSERT_S});
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS fault_slow_first_event ON sessions_app_sessionevent;
CREATE TRIGGER fault_slow_first_event BEFORE INSERT ON sessions_app_sessionevent
  FOR EACH ROW EXECUTE FUNCTION fault_slow_first_event();
"""


def _sql(site: ServedPlatform, sql: str, params: tuple = ()) -> Any:
    return site.orm(
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        f"    cursor.execute({sql!r}, {params!r})\n"
        "    result = cursor.fetchall() if cursor.description else None\n"
    )


def _consistent_sessions(site: ServedPlatform, caller_id: str) -> list[tuple[str, int, list[int], list[str]]]:
    """(id, last_seq, event seqs, event types) of each session of `caller_id`."""
    return site.orm(
        f"""
from sessions_app.models import VoiceSession
result = [
    (str(s.id), s.last_seq, [e.seq for e in s.events.order_by("seq")], [e.type for e in s.events.order_by("seq")])
    for s in VoiceSession.objects.filter(caller_id={caller_id!r})
]
"""
    )


def test_a_web_process_killed_inside_session_creation_leaves_the_session_whole_or_absent(servers, tmp_path):
    site = servers.a
    if not site.extra.get("pg_name"):
        pytest.skip("the slow point is a PostgreSQL trigger (DATABASE_URL)")
    key = site.orm(
        "from sessions_app.models import ApiScope\nfrom sessions_app.services import api_client_create\n"
        "result = api_client_create(name='fault-api', scope=ApiScope.CLIENT)[1]"
    )
    _sql(site, _SLOW_EVENT_TRIGGER)
    victim, port, _log = start_web_server(site.env, tmp_path, name="webkill-c")
    outcome: dict[str, Any] = {}

    async def create() -> None:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.post(
                    f"http://127.0.0.1:{port}/api/v1/sessions",
                    json={"agent": "support", "user_id": SLOW_CALLER},
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    outcome["status"] = response.status
            except aiohttp.ClientError as exc:
                outcome["error"] = type(exc).__name__

    async def scenario() -> None:
        request = asyncio.create_task(create())
        sleeping = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
        deadline = time.monotonic() + 60
        while _sql(site, sleeping)[0][0] == 0:  # the request is inside the service's write
            assert time.monotonic() < deadline, "the request never reached the insert"
            assert not request.done(), outcome
            await asyncio.sleep(0.1)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        await asyncio.wait_for(request, 30)
        while _sql(site, sleeping)[0][0]:  # the database finishes (or abandons) the statement
            await asyncio.sleep(0.2)

    try:
        asyncio.run(scenario())
    finally:
        _sql(site, "DROP TRIGGER IF EXISTS fault_slow_first_event ON sessions_app_sessionevent")
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)

    assert "status" not in outcome, outcome  # the client never got an answer
    sessions = _consistent_sessions(site, SLOW_CALLER)
    # Whole or absent: PostgreSQL runs the one INSERT statement to its end (or rolls all of
    # it back), whatever became of the process that sent it.
    assert len(sessions) <= 1
    for _id, last_seq, seqs, types in sessions:
        assert seqs == list(range(1, last_seq + 1))
        assert types[0] == "session.created"
    orphans = _sql(
        site,
        "SELECT count(*) FROM sessions_app_sessionevent e LEFT JOIN sessions_app_voicesession s"
        " ON s.id = e.session_id WHERE s.id IS NULL",
    )
    assert orphans == [[0]]
    print(
        "\nFIGURES "
        + json.dumps({"fault": "web_killed_inside_session_create", "client": outcome, "sessions_stored": len(sessions)})
    )
