"""Dashboard websockets through the real ASGI stack (origin check, auth) on the real Redis layer."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from sessions_app import broadcast
from sessions_app.live import messages
from sessions_app.live.consumers import CLOSE_FORBIDDEN, CLOSE_TOO_LARGE, MAX_INBOUND_FRAME_BYTES
from sessions_app.metrics import DASHBOARD_EVENTS_DROPPED
from sessions_app.models import SessionEvent, SessionState, VoiceSession
from sessions_app.services import session_event_append, session_transition
from sessions_app.turns import turn_record
from tests.factories import make_voice_session
from voiceplatform.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

ORIGIN = b"http://127.0.0.1:8000"
TIMEOUT = 5


@pytest.fixture(autouse=True)
async def fresh_channel_layer() -> Any:
    """Each test runs on its own event loop: give it its own layer, and stop its hub after.

    The layer instance is cached per process and holds loop-bound locks; a receive left
    pending by one test's loop would otherwise trip the next test's.
    """
    from channels.layers import channel_layers

    from sessions_app.live.hub import _hubs

    channel_layers.backends.clear()
    yield
    for hub in list(_hubs.values()):
        if hub.task is not None:
            hub.task.cancel()
    _hubs.clear()
    channel_layers.backends.clear()


def _cookie_for(user: User) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


async def _connect(
    path: str, user: User | None = None, origin: bytes = ORIGIN
) -> tuple[WebsocketCommunicator, bool, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", origin)]
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(_cookie_for)(user)))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected, code


_PENDING: dict[int, list[dict[str, Any]]] = {}


async def _receive(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """The next message, unpacking the `batch` frames a dashboard page may get."""
    pending = _PENDING.setdefault(id(communicator), [])
    if not pending:
        frame = await communicator.receive_json_from(timeout=TIMEOUT)
        pending.extend(frame["messages"] if frame["type"] == "batch" else [frame])
    return pending.pop(0)


async def _receive_until(communicator: WebsocketCommunicator, kind: str, **match: Any) -> dict[str, Any]:
    """Next message of `kind` (skipping others), e.g. a `session.updated` after an `event.added`."""
    while True:
        message = await _receive(communicator)
        if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
            return message


def _turn(index: int, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "user_text": f"question {index}",
        "generated_text": f"answer {index} with a long tail",
        "heard_text": f"answer {index}",
        "eou_ms": 200,
        "stt_ms": 150,
        "llm_ttft_ms": 300,
        "tts_ttfb_ms": 120,
        "ttfa_ms": 800,
        "e2e_ms": 900,
        **extra,
    }


async def test_staff_gets_a_dashboard_snapshot_then_live_events(staff_user, agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    snapshot = await communicator.receive_json_from(timeout=TIMEOUT)
    assert snapshot["type"] == "snapshot"
    assert [row["id"] for row in snapshot["sessions"]] == [str(session.id)]
    assert snapshot["sessions"][0]["caller_id"] == "caller-42"

    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.ACTIVE)
    updated = await _receive_until(communicator, "session.updated")
    assert updated["session"]["state"] == "active"
    assert updated["session_id"] == str(session.id)
    assert updated["seq"] == 1

    await database_sync_to_async(turn_record)(session_id=session.id, data=_turn(1, e2e_ms=2400))
    turn = await _receive_until(communicator, "turn.completed")
    assert turn["seq"] == 2
    assert turn["turn"]["stages_ms"]["e2e"] == 2400
    assert turn["turn"]["breaches"] == ["e2e"]
    # The table has no transcript, so texts stay out of the dashboard stream.
    assert "generated_text" not in turn["turn"]
    row = await _receive_until(communicator, "session.updated")
    assert (row["session"]["turns"], row["session"]["last_e2e_ms"], row["seq"]) == (1, 2400, 2)
    await communicator.disconnect()


async def test_support_group_member_who_is_not_staff_may_watch(agent) -> None:
    user = await database_sync_to_async(User.objects.create_user)("support-only", password="x-pass-123")
    from django.contrib.auth.models import Group

    group = await database_sync_to_async(lambda: Group.objects.get_or_create(name="Support staff")[0])()
    await database_sync_to_async(user.groups.add)(group)
    communicator, connected, _ = await _connect("/ws/dashboard/", user)
    assert connected
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
    await communicator.disconnect()


async def test_session_socket_sends_session_turns_events_and_budgets(staff_user, agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.ACTIVE)
    await database_sync_to_async(turn_record)(session_id=session.id, data=_turn(1))

    communicator, connected, _ = await _connect(f"/ws/sessions/{session.id}/", staff_user)
    assert connected
    snapshot = await communicator.receive_json_from(timeout=TIMEOUT)
    assert snapshot["type"] == "snapshot"
    assert snapshot["session"]["id"] == str(session.id)
    assert [t["index"] for t in snapshot["turns"]] == [1]
    assert snapshot["turns"][0]["generated_text"] == "answer 1 with a long tail"
    assert [e["type"] for e in snapshot["events"]] == ["session.state_changed", "turn.completed"]
    assert snapshot["budgets_ms"] == agent.budgets_ms()
    assert snapshot["seq"] == 2

    await database_sync_to_async(session_event_append)(
        session_id=session.id, type="tool.called", payload={"name": "place_order", "status": "ok", "replayed": True}
    )
    added = await _receive_until(communicator, "event.added")
    assert added["seq"] == 3
    assert added["event"]["payload"]["replayed"] is True
    await communicator.disconnect()


async def test_it_refuses_a_logged_in_user_who_is_not_staff_with_4403(outsider_user) -> None:
    communicator, connected, code = await _connect("/ws/dashboard/", outsider_user)
    assert not connected
    assert code == CLOSE_FORBIDDEN
    await communicator.disconnect()  # lets the refused consumer finish before the loop ends


async def test_it_refuses_an_anonymous_visitor_with_4403(agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, code = await _connect(f"/ws/sessions/{session.id}/")
    assert not connected
    assert code == CLOSE_FORBIDDEN
    await communicator.disconnect()  # lets the refused consumer finish before the loop ends


async def test_it_rejects_a_foreign_origin_even_for_staff(staff_user) -> None:
    communicator, connected, code = await _connect("/ws/dashboard/", staff_user, origin=b"https://evil.example")
    assert not connected
    assert code != CLOSE_FORBIDDEN  # refused by the origin check, before any auth
    await communicator.disconnect()


async def test_it_closes_on_an_oversized_frame(staff_user) -> None:
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
    await communicator.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * MAX_INBOUND_FRAME_BYTES}))
    closed = await communicator.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": CLOSE_TOO_LARGE}
    await communicator.disconnect()  # what the server sends after the close handshake


async def test_a_frame_just_under_the_limit_is_answered(staff_user) -> None:
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)
    frame = json.dumps({"type": "ping", "pad": ""})
    frame = json.dumps({"type": "ping", "pad": "x" * (MAX_INBOUND_FRAME_BYTES - len(frame))})
    assert len(frame) == MAX_INBOUND_FRAME_BYTES
    await communicator.send_to(text_data=frame)
    assert (await communicator.receive_json_from(timeout=TIMEOUT)) == {"type": "pong"}
    await communicator.disconnect()


async def test_resync_after_a_reconnect_returns_the_missed_events(staff_user, agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    path = f"/ws/sessions/{session.id}/"
    communicator, connected, _ = await _connect(path, staff_user)
    assert connected
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.ACTIVE)
    seen = await _receive_until(communicator, "event.added")
    assert seen["seq"] == 1
    await communicator.disconnect()

    # While the page is away: a turn, a tool call and a reconnect happen.
    await database_sync_to_async(turn_record)(session_id=session.id, data=_turn(1))
    await database_sync_to_async(session_event_append)(session_id=session.id, type="tool.called", payload={"name": "x"})
    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.RECONNECTING)

    # Reconnect with ?after_seq: only what was missed comes back, from the DB, in order.
    communicator, connected, _ = await _connect(f"{path}?after_seq=1", staff_user)
    assert connected
    resync = await communicator.receive_json_from(timeout=TIMEOUT)
    assert resync["type"] == "resync"
    assert [e["seq"] for e in resync["events"]] == [2, 3, 4]
    assert [e["type"] for e in resync["events"]] == ["turn.completed", "tool.called", "session.state_changed"]
    assert [t["index"] for t in resync["turns"]] == [1]
    assert resync["session"]["state"] == "reconnecting"
    assert resync["complete"] is True

    # The same through a message on an open socket.
    await communicator.send_json_to({"type": "resync", "session_id": str(session.id), "after_seq": 3})
    again = await _receive_until(communicator, "resync")
    assert [e["seq"] for e in again["events"]] == [4]
    await communicator.disconnect()


async def test_a_gap_left_by_a_dropped_message_is_counted_and_filled_from_the_db(staff_user, agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect(f"/ws/sessions/{session.id}/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)
    before = DASHBOARD_EVENTS_DROPPED.labels(reason="seq_gap")._value.get()

    # Two events reach the DB, but only the second one's message reaches the layer,
    # as when a message is published while nobody is subscribed.
    await database_sync_to_async(VoiceSession.objects.filter(pk=session.pk).update)(last_seq=1)
    await database_sync_to_async(SessionEvent.objects.create)(session=session, seq=1, type="caller.joined", payload={})
    event = await database_sync_to_async(SessionEvent.objects.create)(
        session=session, seq=2, type="caller.left", payload={}
    )
    await get_channel_layer().group_send(broadcast.session_group(session.id), messages.event_added(event))
    repaired = await _receive_until(communicator, "resync")
    assert [e["type"] for e in repaired["events"]] == ["caller.joined", "caller.left"]
    assert DASHBOARD_EVENTS_DROPPED.labels(reason="seq_gap")._value.get() == before + 1
    await communicator.disconnect()


async def test_an_unknown_session_is_closed_with_4404(staff_user) -> None:
    communicator, connected, code = await _connect(f"/ws/sessions/{uuid.uuid4()}/", staff_user)
    if connected:  # accepted first, then closed: the close frame follows
        closed = await communicator.receive_output(timeout=TIMEOUT)
        code = closed.get("code")
    assert code == 4404
    await communicator.disconnect()


async def test_bad_frames_get_an_error_not_a_crash(staff_user) -> None:
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)
    await communicator.send_to(text_data="not json")
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "error"
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert "binary" in (await communicator.receive_json_from(timeout=TIMEOUT))["detail"]
    await communicator.send_json_to({"type": "launch"})
    error = await communicator.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error" and "launch" in error["detail"]
    await asyncio.sleep(0)
    await communicator.disconnect()


async def test_many_dashboards_share_one_layer_subscription_per_process(staff_user, agent) -> None:
    from sessions_app.live.hub import dashboard_hub

    layer = get_channel_layer()._get_layer()  # this event loop's pub/sub layer
    group_key = layer._get_group_channel_name(broadcast.DASHBOARD_GROUP)

    pages = []
    for _ in range(3):
        communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
        assert connected
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
        pages.append(communicator)
    hub = dashboard_hub()
    assert len(hub.members) == 3
    assert layer.groups[group_key] == {hub.channel}  # one channel (one subscription) for three pages

    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.ACTIVE)
    for communicator in pages:
        updated = await _receive_until(communicator, "session.updated")
        assert updated["session"]["id"] == str(session.id)
    for communicator in pages:
        await communicator.disconnect()
    assert len(hub.members) == 0 and hub.task is None
    assert group_key not in layer.groups  # unsubscribed with the last page


async def test_a_dashboard_that_falls_behind_drops_counts_and_gets_a_fresh_snapshot(
    staff_user, agent, monkeypatch
) -> None:
    from sessions_app.live import hub

    monkeypatch.setattr(hub, "DASHBOARD_QUEUE_SIZE", 2)
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    (row,) = (await communicator.receive_json_from(timeout=TIMEOUT))["sessions"]
    (page,) = hub.dashboard_hub().members
    before = DASHBOARD_EVENTS_DROPPED.labels(reason="slow_client")._value.get()

    # Five messages offered at once to a queue of two: three are dropped and counted.
    for seq in range(1, 6):
        page.offer(messages.session_updated({**row, "seq": seq}))
    assert DASHBOARD_EVENTS_DROPPED.labels(reason="slow_client")._value.get() == before + 3
    # Once caught up, the page gets the whole truth again from the DB.
    snapshot = await _receive_until(communicator, "snapshot")
    assert [row["id"] for row in snapshot["sessions"]] == [str(session.id)]
    await communicator.disconnect()


async def test_a_dashboard_re_reads_the_row_of_a_session_whose_messages_were_dropped(staff_user, agent) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)  # snapshot: this session at seq 0
    before = DASHBOARD_EVENTS_DROPPED.labels(reason="seq_gap")._value.get()
    # The DB moved to seq 3 (two turns' worth), but only the last message made it through.
    await database_sync_to_async(VoiceSession.objects.filter(pk=session.pk).update)(last_seq=3, turn_count=2)
    lost = SessionEvent(session=session, seq=3, type="x", payload={})  # never stored: only its message
    await get_channel_layer().group_send(broadcast.DASHBOARD_GROUP, messages.event_added(lost))
    repaired = await _receive_until(communicator, "session.updated", repaired=True)
    assert (repaired["session"]["turns"], repaired["seq"]) == (2, 3)
    assert DASHBOARD_EVENTS_DROPPED.labels(reason="seq_gap")._value.get() == before + 2
    await communicator.disconnect()


# --- issue 17, item 15 ----------------------------------------------------------------------


async def test_a_revoked_staff_member_is_disconnected_within_the_recheck(staff_user, settings) -> None:
    settings.DASHBOARD_RIGHTS_RECHECK_SECONDS = 0.2
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected and (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"

    def revoke() -> None:
        User.objects.filter(pk=staff_user.pk).update(is_staff=False)
        staff_user.groups.clear()

    await database_sync_to_async(revoke)()
    output = await communicator.receive_output(timeout=TIMEOUT)
    while output["type"] != "websocket.close":
        output = await communicator.receive_output(timeout=TIMEOUT)
    assert output["code"] == CLOSE_FORBIDDEN


async def test_a_logged_out_session_stops_receiving(staff_user, settings) -> None:
    from django.contrib.sessions.models import Session

    settings.DASHBOARD_RIGHTS_RECHECK_SECONDS = 0.2
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected and (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
    await database_sync_to_async(lambda: Session.objects.all().delete())()
    output = await communicator.receive_output(timeout=TIMEOUT)
    while output["type"] != "websocket.close":
        output = await communicator.receive_output(timeout=TIMEOUT)
    assert output["code"] == CLOSE_FORBIDDEN


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "resync", "after_seq": 1e400}',
        '{"type": "resync", "after_seq": 100000000000000000000000000000}',
        '{"type": "resync", "after_seq": -5}',
        "[" * 20000 + "]" * 20000,
    ],
)
async def test_a_hostile_resync_gets_an_error_frame_and_the_socket_stays_open(staff_user, agent, frame) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect(f"/ws/sessions/{session.pk}/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)  # the snapshot
    await communicator.send_to(text_data=frame)
    error = await _receive_until(communicator, "error")
    assert "after_seq" in error["detail"] or "JSON objects" in error["detail"]
    await communicator.send_json_to({"type": "ping"})
    assert (await _receive_until(communicator, "pong"))["type"] == "pong"
    await communicator.disconnect()


# --- issue 18: every live message fits its schema (tests/live_schema.py checks them all) ----


async def test_the_schema_check_sees_every_layer_message_and_frame(staff_user, agent, live_messages) -> None:
    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    await communicator.receive_json_from(timeout=TIMEOUT)
    await database_sync_to_async(session_transition)(session_id=session.id, to_state=SessionState.ACTIVE)
    await database_sync_to_async(turn_record)(session_id=session.id, data=_turn(1))
    await _receive_until(communicator, "turn.completed")
    await communicator.disconnect()
    assert {"snapshot", "live.batch", "session.updated", "turn.completed"} <= set(live_messages.checked)
    assert not live_messages.problems


async def test_a_malformed_message_fails_the_schema_check(staff_user, agent, live_messages) -> None:
    from sessions_app.live.schemas import LiveMessageError

    session = await database_sync_to_async(make_voice_session)(agent, caller_id="caller-42")
    with pytest.raises(LiveMessageError, match="session.updated"):
        await get_channel_layer().group_send(
            broadcast.DASHBOARD_GROUP, {"type": "session.updated", "session_id": str(session.id), "seq": 1}
        )
    communicator, connected, _ = await _connect("/ws/dashboard/", staff_user)
    assert connected
    (row,) = (await communicator.receive_json_from(timeout=TIMEOUT))["sessions"]
    from sessions_app.live import hub

    (page,) = hub.dashboard_hub().members
    page.offer(messages.session_updated({**row, "turns": "two"}))  # a frame the page would send
    await asyncio.sleep(0.2)
    await communicator.disconnect()
    assert [p.split(":")[0] for p in live_messages.problems] == [
        "group_send to 'dashboard'",
        "websocket frame of DashboardConsumer",
    ]
    live_messages.problems.clear()  # expected here: the check works
