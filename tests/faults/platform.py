"""The platform as `make demo` runs it (web, Celery worker + beat, local agent host), on a
private PostgreSQL cluster and a private Redis that the fault tests stop and restart.

Shared by tests/faults and bench/soak.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.e2e.platform import Platform
from tests.faults.infra import PrivatePostgres, PrivateRedis

# Long enough for a few caller turns on each side of a fault.
FAULT_CALL = """\
name: fault-call
description: Four caller turns with a pause, so a fault can land in the middle of the call.
agent: demo-scripted
steps:
  - wait_for_agent: {}
  - say: "Hello, what are your opening hours?"
  - wait_for_agent: {}
  - say: "Do you have coffee and tea?"
  - wait_for_agent: {}
  - pause: 2
  - say: "Hello, what are your opening hours?"
  - wait_for_agent: {}
  - say: "Thank you, that is all for today."
  - wait_for_agent: {}
  - wait_turns: {count: 5, timeout: 120}
  - end: {}
expect:
  min_turns: 5
"""
FAULT_CALL_TURNS = 5  # the greeting and four caller turns


class FaultPlatform(Platform):
    """`Platform` with its database on `pg` and its Redis on `redis`."""

    def __init__(self, tmp: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis()
        self.fault_db = f"vp_faults_{uuid.uuid4().hex[:8]}"
        self.database_url = self.pg.create_database(self.fault_db)
        super().__init__(tmp)
        self.env["REDIS_URL"] = self.redis.url
        self.env.update(extra_env or {})
        self.scenario_path = tmp / "fault-call.yaml"
        self.scenario_path.write_text(FAULT_CALL)

    def _database_url(self) -> str:
        return self.database_url

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(sql, params).fetchall())

    def cleanup(self) -> None:
        try:
            super().cleanup()
        finally:
            self.pg.destroy()
            self.redis.destroy()

    # -- what was stored ----------------------------------------------------------------------
    def stored(self, session_id: str) -> dict[str, Any]:
        """The session's turns and events as the database holds them."""
        turns = [
            r[0]
            for r in self.query(
                'SELECT "index" FROM sessions_app_turn WHERE session_id=%s ORDER BY "index"', (session_id,)
            )
        ]
        events = self.query(
            "SELECT seq, type, record_key FROM sessions_app_sessionevent WHERE session_id=%s ORDER BY seq",
            (session_id,),
        )
        return {
            "turns": turns,
            "seqs": [e[0] for e in events],
            "types": [e[1] for e in events],
            "record_keys": [e[2] for e in events if e[2]],
        }

    def turn_count(self, session_id: str) -> int:
        try:
            return int(self.query("SELECT count(*) FROM sessions_app_turn WHERE session_id=%s", (session_id,))[0][0])
        except Exception:  # the database is down right now
            return -1

    def latest_session_id(self) -> str | None:
        rows = self.query("SELECT id FROM sessions_app_voicesession ORDER BY created_at DESC LIMIT 1")
        return str(rows[0][0]) if rows else None


def check_nothing_lost_or_doubled(stored: dict[str, Any], *, min_turns: int) -> list[str]:
    """Problems with one session's stored turns and events ([] when none)."""
    problems = []
    turns = stored["turns"]
    if len(turns) < min_turns:
        problems.append(f"{len(turns)} turns stored, the caller's call had {min_turns}")
    if turns != list(range(len(turns))):
        problems.append(f"turn indexes are not 0..n-1: {turns}")
    if stored["seqs"] != list(range(1, len(stored["seqs"]) + 1)):
        problems.append(f"event seqs are not gapless from 1: {stored['seqs']}")
    if stored["types"].count("turn.completed") != len(turns):
        problems.append(f"{stored['types'].count('turn.completed')} turn.completed events for {len(turns)} turns")
    if len(set(stored["record_keys"])) != len(stored["record_keys"]):
        problems.append("an agent record was stored twice")
    return problems
