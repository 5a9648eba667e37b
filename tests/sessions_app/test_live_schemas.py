"""The live message schemas (sessions_app/live/schemas.py): every builder's message fits
its type's schema, and each schema refuses a malformed message, so the check can fail."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessions_app.live import messages
from sessions_app.live.schemas import SCHEMAS, LiveMessageError, check
from sessions_app.models import SessionEvent, SessionState, Turn, VoiceSession
from sessions_app.services import session_event_append, session_transition
from sessions_app.turns import turn_heard_record, turn_record
from tests.layers import module_imports


@pytest.fixture
def session(db, agent) -> VoiceSession:
    return VoiceSession.objects.create(
        agent=agent,
        prompt_version=agent.prompt_versions.get(status="published"),
        caller_id="caller-1",
        room_name=f"room-{uuid.uuid4().hex[:12]}",
    )


def _built(session: VoiceSession) -> dict[str, dict[str, Any]]:
    """One message of every type, each from its builder and real rows."""
    from sessions_app import dashboard_selectors

    session_transition(session_id=session.id, to_state=SessionState.ACTIVE)
    turn = turn_record(session_id=session.id, data={"index": 1, "user_text": "hi", "e2e_ms": 900, "tool_calls": []})
    event = session_event_append(session_id=session.id, type="tool.called", payload={"name": "x"})
    session.refresh_from_db()
    row = messages.session_row(session)
    seq = SessionEvent.objects.get(session=session, type="turn.completed").seq
    live = [messages.event_added(event), messages.turn_completed(turn, seq=seq), messages.session_updated(row)]
    heard = turn_heard_record(session_id=session.id, index=1, heard_gap_ms=1234.5, barge_in_ms=310.0)
    heard_seq = SessionEvent.objects.get(session=session, type="turn.heard").seq
    snapshot = dashboard_selectors.session_snapshot(session_id=session.id)
    missed = dashboard_selectors.session_missed(session_id=session.id, after_seq=0)
    built = [
        *live,
        messages.session_updated(row, repaired=True),
        messages.turn_heard(heard, seq=heard_seq),
        messages.live_batch(live),
        messages.agent_interrupt(session.id, source="client", event_seq=event.seq),
        messages.agent_end(session.id, reason="client_request"),
        messages.agent_crash(),
        messages.dashboard_snapshot(dashboard_selectors.dashboard_rows()),
        messages.session_snapshot(str(session.id), snapshot),
        messages.resync(str(session.id), after_seq=0, **missed),
        messages.compact_turn_completed(live[1]),
        messages.error("frames must be JSON objects"),
        messages.pong(),
    ]
    built.append(json.loads(messages.batch_frame(messages.encode(m) for m in live)))
    return {m["type"]: m for m in built}


def test_every_builder_makes_messages_that_fit_their_schema(session) -> None:
    built = _built(session)
    assert set(built) == set(SCHEMAS)  # a schema for every message type, and no other
    for message in built.values():
        check(message)


def test_a_row_of_a_session_without_turns_or_times_fits() -> None:
    row = messages.session_row(VoiceSession(id=uuid.uuid4(), caller_id="c", room_name="r", state="created"))
    check(messages.session_updated(row))


def _mutations(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Malformed copies: each field missing, each field of a wrong type, an extra field."""
    out = []
    for key in message:
        if key == "type":
            continue
        missing = copy.deepcopy(message)
        del missing[key]
        out.append((f"without {key}", missing))
        wrong = copy.deepcopy(message)
        wrong[key] = ["not", "this"] if not isinstance(message[key], list) else "not a list"
        out.append((f"{key} of a wrong type", wrong))
    out.append(("with an extra field", {**copy.deepcopy(message), "extra": 1}))
    return out


def test_each_schema_refuses_malformed_messages(session) -> None:
    for kind, message in _built(session).items():
        for what, bad in _mutations(message):
            if what == "without repaired":
                continue  # optional: a plain `session.updated`
            with pytest.raises(LiveMessageError):
                check(bad)
                pytest.fail(f"{kind} {what} passed")


@pytest.mark.parametrize(
    "path, value",
    [
        (("session", "turns"), "2"),
        (("session", "state"), "sleeping"),
        (("session", "id"), "not-a-uuid"),
        (("session", "agent_status"), "joined"),
        (("seq",), -1),
        (("seq",), 1.5),
    ],
)
def test_a_wrong_field_inside_a_session_row_is_refused(session, path, value) -> None:
    message = messages.session_updated(messages.session_row(session))
    node = message
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(LiveMessageError):
        check(message)


def test_a_turn_and_an_event_inside_messages_are_checked(session) -> None:
    turn = Turn(session=session, index=1, interrupted=False)
    message = messages.turn_completed(turn, seq=1)
    check(message)
    message["turn"]["interrupted"] = "no"
    with pytest.raises(LiveMessageError, match="turn.completed at turn/interrupted"):
        check(message)
    heard = messages.turn_heard(Turn(session=session, index=1, heard_gap_ms=900.0, heard_difference_ms=-40.0), seq=2)
    check(heard)
    for key, value in (("heard_gap_ms", -1), ("heard_gap_ms", "900"), ("heard_mismatch", None)):
        bad = copy.deepcopy(heard)
        bad["turn"][key] = value
        with pytest.raises(LiveMessageError, match=f"turn.heard at turn/{key}"):
            check(bad)
    event = messages.event_added(SessionEvent(session=session, seq=1, type="x", payload={}))
    check(event)
    event["event"]["payload"] = []
    with pytest.raises(LiveMessageError, match="event/payload"):
        check(event)


def test_a_batch_with_a_bad_message_inside_is_refused(session) -> None:
    row = messages.session_row(session)
    good = messages.session_updated(row)
    check(messages.live_batch([good, good]))
    with pytest.raises(LiveMessageError):
        check(messages.live_batch([good, {**good, "seq": "1"}]))
    with pytest.raises(LiveMessageError):
        check({"type": "live.batch", "messages": [good]})  # one message travels alone


@pytest.mark.parametrize(
    "message",
    [{"type": "session.deleted", "session_id": str(uuid.uuid4())}, {"session_id": "x"}, {"type": 3}, [], "pong"],
)
def test_an_unknown_type_or_a_non_object_is_refused(message) -> None:
    with pytest.raises(LiveMessageError):
        check(message)


def test_the_live_package_layers_point_one_way() -> None:
    """messages and schemas stand alone (no app, no Django); the hub sits under the
    consumers; only the routing imports the consumers: no import cycle through live/."""
    root = Path(__file__).resolve().parents[2]
    live = root / "sessions_app" / "live"
    for name in ("messages.py", "schemas.py"):
        found = module_imports(live / name)
        assert not any(m.startswith(("sessions_app", "agents_app", "tools_app", "django", "channels")) for m in found)
    assert not any(m.startswith("sessions_app.live.consumers") for m in module_imports(live / "hub.py"))
    users = {
        str(path.relative_to(root))
        for path in (root / "sessions_app").rglob("*.py")
        if any(m.startswith(("sessions_app.live.consumers", "sessions_app.live.hub")) for m in module_imports(path))
    }
    assert users == {"sessions_app/routing.py", "sessions_app/live/consumers.py"}
