"""Support staff in a live call over a real LiveKit server (issue 33, docs/supervisor.md).

A caller (livekit rtc SDK) talks to the demo-scripted agent (the offline stand-in LLM). A
listener joins with the token the platform mints for staff (sessions_app.services
`session_listen`: hidden, subscribe-only) and hears the agent's answer, while the caller's
room never shows it; a whisper (`session_whisper`) reaches the agent's job and shapes its
next reply (the stand-in relays a supervisor's note). The dashboard's HTTP endpoints and
their permissions are tested in tests/supervisor/.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from livekit import rtc

from tests.livekit.conftest import LiveKitPlatform

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(240)]

NOTE = "Offer the caller a free delivery."


def _staff_call(lk: LiveKitPlatform, session_id: str, action: str) -> dict:
    """What the dashboard's POST does for a signed-in support person, through the service."""
    out = lk.manage(
        "shell",
        "-c",
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from sessions_app import services\n"
        "from sessions_app.tokens import client_url\n"
        "user, _ = User.objects.get_or_create(username='tier-staff')\n"
        + (
            f"t = services.session_listen(session_id={session_id!r}, user=user)\n"
            "print('OUT', json.dumps({'url': client_url(), 'token': t.token, 'identity': t.identity}))\n"
            if action == "listen"
            else f"e = services.session_whisper(session_id={session_id!r}, user=user, text={NOTE!r})\n"
            # The shell exits at once: let the publisher thread send the note first.
            "from sessions_app import broadcast\n"
            "broadcast.publish_flush()\n"
            "print('OUT', json.dumps({'seq': e.seq}))\n"
        ),
    )
    line = next(x for x in out.splitlines() if x.startswith("OUT "))
    return json.loads(line[4:])


async def test_staff_listen_in_unseen_and_a_whisper_shapes_the_next_reply(caller, lk: LiveKitPlatform) -> None:
    call = caller()
    await call.start()
    await call.agent_turn()  # the greeting

    grant = await asyncio.to_thread(_staff_call, lk, call.session_id, "listen")
    listener = rtc.Room()
    loud: list[float] = []  # when the listener heard the agent speak
    readers: list[asyncio.Task] = []

    async def read(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track):
            samples = np.frombuffer(bytes(event.frame.data), dtype=np.int16)
            if len(samples) and float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300:
                loud.append(time.monotonic())

    @listener.on("track_subscribed")
    def _on_track(track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant):
        if track.kind == rtc.TrackKind.KIND_AUDIO and participant.identity.startswith("agent-"):
            readers.append(asyncio.ensure_future(read(track)))

    await listener.connect(grant["url"], grant["token"], options=rtc.RoomOptions(auto_subscribe=True))
    try:
        # Hidden: the caller's room never shows the listener, whom the agent's job ignores.
        await asyncio.sleep(2.0)
        assert grant["identity"] not in call.transport.room.remote_participants
        assert grant["identity"].startswith("staff-tier-staff-")

        await asyncio.to_thread(_staff_call, lk, call.session_id, "whisper")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "agent.supervisor_note" not in [
            kind for _, kind, _ in lk.events(call.session_id)
        ]:
            await asyncio.sleep(0.3)
        assert "agent.supervisor_note" in [kind for _, kind, _ in lk.events(call.session_id)], lk.events(
            call.session_id
        )
        asked = time.monotonic()
        await call.say("Hello, what are your opening hours?")
        await call.agent_turn()
        detail = await call.wait_detail(
            lambda d: any("reminds me" in (t["generated_text"] or "") for t in d["turns"]), "the whispered reply"
        )
        reply = next(t for t in detail["turns"] if "reminds me" in (t["generated_text"] or ""))
        assert reply["user_text"] and reply["generated_text"].endswith(f"My colleague reminds me: {NOTE}")
        # The listener heard the agent answer.
        assert [t for t in loud if t > asked], "the listener heard nothing of the agent's answer"
    finally:
        for task in readers:
            task.cancel()
        await listener.disconnect()
    events = [(kind, payload) for _, kind, payload in lk.events(call.session_id)]
    kinds = [kind for kind, _ in events]
    assert "staff.listening" in kinds and "staff.whisper" in kinds and "agent.supervisor_note" in kinds
    whisper = next(p for k, p in events if k == "staff.whisper")
    assert whisper == {"user": "tier-staff", "text": NOTE}
