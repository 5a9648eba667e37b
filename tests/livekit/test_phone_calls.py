"""Phone calls through LiveKit's SIP service (issue 29), with a real SIP phone.

The platform runs as in the rest of the tier (a real LiveKit server in this network
namespace) plus LiveKit's SIP service (`make livekit-sip`), which meets the server in the
platform's Redis. The phone is pjsua2 (agents_app/runtime/simulator/sip_phone.py): it
dials the phone line's number over UDP, negotiates telephone audio (PCMU/PCMA, 8 kHz),
plays a WAV of Piper speech resampled to 8 kHz and records what it hears.

What is checked: an inbound call is answered by the agent, which greets; the caller's
question is recognised and answered; keys pressed on the phone reach the agent as one
entry it answers; the call is a phone session (masked number, turns stored) and hanging
up ends it; a call from an address the line does not allow is
refused and opens no session; `manage.py phone_lines --sync` applies the line. Placed
calls (POST /calls): a busy phone is the session's outcome; an answering phone hears the
greeting, the agent presses keys on it when asked (DTMF out) and transfers it to a desk
phone by SIP REFER when asked for a person, which ends the session as `transferred`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.livekit.conftest import LiveKitPlatform, RecordingLLM, WebhookTap, running_platform
from tests.waiting import wait_until
from voiceplatform import livekit_dev

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(400)]

LINE_NUMBER = "+15550142"
CALLER_NUMBER = "+15557654321"
QUESTION = "Hello, what are your opening hours?"


def namespace_address() -> str:
    """This namespace's test address (the veth end, 10.213.N.1): what WebRTC and SIP use."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    raise RuntimeError(f"no non-loopback IPv4 address here:\n{out}")


@pytest.fixture(scope="module")
def phone_lk(
    tmp_path_factory: pytest.TempPathFactory, webhook_tap: WebhookTap, recording_llm: RecordingLLM
) -> Iterator[LiveKitPlatform]:
    if livekit_dev.sip_binary() is None:
        message = "no livekit-sip: `make livekit-sip` builds LiveKit's SIP service (Go, libopus-dev, libsoxr-dev)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)
    from agents_app.runtime.simulator import sip_phone

    # A carrier's narrowband telephone audio (LiveKit's SIP service prefers G.722 when offered).
    sip_phone.configure(codecs=("PCMU/8000", "PCMA/8000"))
    platform = LiveKitPlatform(Path(tmp_path_factory.mktemp("lk-sip")), tap=webhook_tap, llm=recording_llm, sip=True)
    with running_platform(platform):
        address = namespace_address()
        platform.manage(
            "shell",
            "-c",
            "from agents_app.models import Agent, PhoneLine\n"
            f"PhoneLine.objects.create(number={LINE_NUMBER!r}, agent=Agent.objects.get(slug='demo-scripted'),"
            f" allowed_addresses=[{address!r}])\n",
        )
        out = platform.manage("phone_lines", "--sync")
        assert f"live     {LINE_NUMBER}" in out, out
        yield platform


def _sip_uri(platform: LiveKitPlatform, host: str) -> str:
    assert platform.sip_config is not None
    return f"sip:{LINE_NUMBER}@{host}:{platform.sip_config.sip_port}"


def _question_wav(path: Path, text: str = QUESTION) -> float:
    """What the caller says as the phone sends it, written to `path`: Piper speech at 8 kHz,
    then silence. Returns the speech's length in seconds."""
    from livekit import rtc

    from agents_app.runtime.providers import piper

    samples, rate = piper.synthesize(text)
    frame = rtc.AudioFrame(samples.tobytes(), rate, 1, len(samples))
    resampler = rtc.AudioResampler(input_rate=rate, output_rate=8000, num_channels=1)
    pcm = b"".join(bytes(f.data) for f in [*resampler.push(frame), *resampler.flush()])
    pcm += b"\x00\x00" * 8000 * 2  # two seconds of silence: the end of the caller's turn
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm)
    return len(samples) / rate


def _speech_spans(samples: np.ndarray, rate: int, *, threshold: float = 300.0) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches where the recording carries sound (20 ms RMS)."""
    frame = rate // 50
    spans: list[tuple[float, float]] = []
    start = None
    for i in range(0, len(samples) - frame, frame):
        loud = float(np.sqrt(np.mean(samples[i : i + frame].astype(np.float64) ** 2))) > threshold
        t = i / rate
        if loud and start is None:
            start = t
        elif not loud and start is not None:
            if t - start >= 0.2:
                spans.append((start, t))
            start = None
    return spans


def _quiet_for(call: Any, seconds: float) -> bool:
    """The phone has heard speech, and nothing for the last `seconds` of its recording."""
    samples, rate = call.heard_so_far()
    spans = _speech_spans(samples, rate)
    return bool(spans) and len(samples) / rate - spans[-1][1] >= seconds


def _session_rows(platform: LiveKitPlatform) -> list[tuple]:
    return platform.query(
        "SELECT id, channel, caller_id, caller_number, state, end_reason, room_name FROM sessions_app_voicesession "
        "WHERE channel = 'phone' ORDER BY created_at"
    )


def _logs(platform: LiveKitPlatform) -> str:
    """The tails of the platform's, the SIP service's and the server's logs (on a failure)."""
    parts = []
    for name, path in (
        ("demo", platform.log_path),
        ("livekit-sip", platform.sip_log),
        ("livekit-server", platform.server_log),
    ):
        text = path.read_text(errors="replace") if path.exists() else "(none)"
        parts.append(f"--- {name} ---\n" + "\n".join(text.splitlines()[-80:]))
    return "\n".join(parts)


@pytest.fixture
def show_logs(phone_lk: LiveKitPlatform):
    """A failure's report carries the logs' tails (tests/livekit/conftest.py's report hook):
    the tier deletes its data directory at the end."""
    return lambda: _logs(phone_lk)


def test_a_phone_call_is_answered_greets_answers_and_hanging_up_ends_it(
    phone_lk: LiveKitPlatform, tmp_path: Path, show_logs: Any, capsys: Any
):
    from agents_app.runtime.simulator.sip_phone import SipPhone

    address = namespace_address()
    with SipPhone(bind=address, user=CALLER_NUMBER) as phone:
        call = phone.call(_sip_uri(phone_lk, address))
        # The SIP service answers once the agent has joined and subscribed to the caller.
        call.expect_confirmed(60)
        # Recorded from the answer on: its time 0 is now (before it, the SIP service's early
        # media would start the recording at a time the test cannot know).
        call.start_recording(tmp_path / "heard.wav")
        media_t0 = time.monotonic()
        assert call.codec.startswith(("PCMU", "PCMA")), call.codec  # telephone audio, 8 kHz
        session = wait_until(lambda: _session_rows(phone_lk), what="the phone session", timeout=30)[-1]
        session_id = str(session[0])
        assert session[1] == "phone" and session[3] == CALLER_NUMBER
        assert session[2] != CALLER_NUMBER and session[2].endswith(CALLER_NUMBER[-2:]), session[2]
        # The greeting reaches the phone; the caller waits until it has finished.
        wait_until(lambda: _speech_spans(*call.heard_so_far()), what="the greeting on the phone", timeout=30)
        wait_until(lambda: _quiet_for(call, 1.5), what="the end of the greeting", timeout=30)
        # On the recording's clock (its file lags the call by the recorder's buffer).
        asked_at = time.monotonic() - media_t0
        speech_s = _question_wav(tmp_path / "question.wav")
        call.play(tmp_path / "question.wav")
        assert call.wait_played(30)
        turns = wait_until(
            lambda: phone_lk.query(
                "SELECT index, user_text, generated_text, eou_ms, e2e_ms FROM sessions_app_turn WHERE session_id = %s "
                "AND user_text <> '' ORDER BY index",
                (session_id,),
            ),
            what="the caller's turn stored",
            timeout=40,
        )
        heard = turns[0][1].lower()
        assert "hours" in heard, turns
        # The answer is heard on the phone after the question.
        answer = wait_until(
            lambda: [s for s in _speech_spans(*call.heard_so_far()) if s[0] > asked_at + speech_s],
            what="the answer on the phone",
            timeout=30,
        )[0]
        # What a phone caller waits, on the recording's clock (the phone starts playing the
        # question within a frame or two of `asked_at`): a figure for docs/telephony.md.
        with capsys.disabled():  # shown in every run, not only a failing one
            print(
                "\nphone call:",
                json.dumps(
                    {
                        "codec": call.codec,
                        "caller_words_stored": turns[0][1],
                        "answer_heard_after_question_end_s": round(answer[0] - (asked_at + speech_s), 2),
                        "agent_eou_ms": turns[0][3],
                        "agent_e2e_ms": turns[0][4],
                    }
                ),
            )
        # Keys pressed on the phone (RFC 2833) reach the agent as one entry it answers.
        assert call.send_dtmf("12#") == "rfc2833"
        dtmf = wait_until(
            lambda: [p for _, kind, p in phone_lk.events(session_id) if kind == "caller.dtmf"],
            what="the keypad entry",
            timeout=20,
        )
        assert dtmf[0]["digits"] == "12#", dtmf
        keyed = wait_until(
            lambda: phone_lk.query(
                "SELECT user_text FROM sessions_app_turn WHERE session_id = %s AND user_text LIKE %s",
                (session_id, "%keypad%"),
            ),
            what="the keypad turn",
            timeout=20,
        )
        assert "1 2 #" in keyed[0][0], keyed
        call.hangup()
        assert call.wait_disconnected(10)
    row = wait_until(
        lambda: [r for r in _session_rows(phone_lk) if str(r[0]) == session_id and r[4] == "ended"],
        what="the end",
        timeout=30,
    )
    assert row[0][5] == "caller_hung_up", row
    events = [kind for _, kind, _ in phone_lk.events(session_id)]
    assert "session.created" in events and "caller.joined" in events and "agent.joined" in events, events


def _sip_call_results(platform: LiveKitPlatform, from_ip: str) -> list[tuple[int, str]]:
    """(SIP status, result) of each inbound call from `from_ip` that the SIP service closed."""
    import json

    found = []
    for line in platform.sip_log.read_text(errors="replace").splitlines():
        if "call statistics" not in line or "{" not in line:
            continue
        fields = json.loads(line[line.index("{") :])
        if fields.get("fromIP") == from_ip and fields.get("direction") == "inbound":
            found.append((int(fields.get("status", 0)), str(fields.get("result", ""))))
    return found


def test_a_call_from_an_address_the_line_does_not_allow_is_refused(phone_lk: LiveKitPlatform, show_logs: Any):
    from agents_app.runtime.simulator.sip_phone import SipPhone

    before = len(_session_rows(phone_lk))
    # From loopback: the line allows only the namespace's test address. LiveKit's SIP
    # service refuses the call without saying why to the caller (it is never answered).
    with SipPhone(bind="127.0.0.1", user=CALLER_NUMBER) as phone:
        call = phone.call(_sip_uri(phone_lk, "127.0.0.1"))
        refused = wait_until(
            lambda: _sip_call_results(phone_lk, "127.0.0.1"), what="the SIP service to close the call", timeout=20
        )
        assert refused[0][0] >= 400 and refused[0][1] != "success", refused
        assert not call.wait_confirmed(3)
        call.hangup()
    time.sleep(2.0)
    assert len(_session_rows(phone_lk)) == before


KEYS_LINE = "Press the keys one two three please."
TRANSFER_LINE = "Please transfer me to a person."
CALLEE_NUMBER = "+15550177"


def _place_call(platform: LiveKitPlatform, to: str) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        f"{platform.base_url}/api/v1/calls",
        data=json.dumps({"line": LINE_NUMBER, "to": to}).encode(),
        headers={"Authorization": f"Bearer {platform.simulator_key()}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return json.loads(response.read())


def _story(platform: LiveKitPlatform, session_id: str) -> str:
    """The session's turns and events, for a failure's message."""
    turns = platform.query(
        "SELECT index, user_text, generated_text FROM sessions_app_turn WHERE session_id = %s ORDER BY index",
        (session_id,),
    )
    events = [(kind, payload) for _, kind, payload in platform.events(session_id)]
    return f"turns: {turns}\nevents: {events}"


def _session_state(platform: LiveKitPlatform, session_id: str) -> tuple[str, str]:
    rows = platform.query("SELECT state, end_reason FROM sessions_app_voicesession WHERE id = %s", (session_id,))
    return rows[0][0], rows[0][1]


def test_the_platform_calls_a_phone_presses_keys_on_it_and_transfers_it(
    phone_lk: LiveKitPlatform, tmp_path: Path, show_logs: Any
):
    from agents_app.runtime.simulator.sip_phone import SipPhone
    from tests.ports import free_udp_port

    address = namespace_address()
    callee_port, desk_port = free_udp_port(), free_udp_port()
    desk_uri = f"sip:desk@{address}:{desk_port}"
    # The line places calls through "the carrier" (here: the callee's phone itself) and
    # transfers to the desk; the demo agent gets the two telephony tools; the simulator's
    # API key may call +1555….
    phone_lk.manage(
        "shell",
        "-c",
        "from agents_app.models import Agent, PhoneLine\n"
        "from sessions_app.models import ApiClient\n"
        "from tools_app.models import ToolDefinition\n"
        f"PhoneLine.objects.filter(number={LINE_NUMBER!r}).update(outbound_address={f'{address}:{callee_port}'!r},"
        f" transfer_to={desk_uri!r})\n"
        "ApiClient.objects.filter(scope='client').update(call_destinations=['+1555'])\n"
        "agent = Agent.objects.get(slug='demo-scripted')\n"
        "for name, description, parameters in [\n"
        "    ('transfer_call', 'Transfer the caller to a person from our staff.', {}),\n"
        "    ('send_keypad_digits', 'Press keys (DTMF tones) to go through an automated menu.',\n"
        "     {'type': 'object', 'properties': {'digits': {'type': 'string'}}, 'required': ['digits']}),\n"
        "]:\n"
        "    ToolDefinition.objects.create(name=name, description=description, kind='builtin',"
        " builtin_name=name, parameters=parameters).agents.add(agent)\n",
    )
    out = phone_lk.manage("phone_lines", "--sync")
    assert f"live     {LINE_NUMBER}" in out, out

    with (
        SipPhone(bind=address, port=callee_port, user=CALLEE_NUMBER, reject_with=486) as callee,
        SipPhone(bind=address, port=desk_port, user="desk", auto_answer=True) as desk,
    ):
        # A busy phone: the session fails with the outcome, and no agent talks to anyone.
        busy = _place_call(phone_lk, CALLEE_NUMBER)
        assert busy["direction"] == "outbound" and busy["state"] == "created", busy
        state = wait_until(
            lambda: (s := _session_state(phone_lk, busy["session_id"]))[0] == "failed" and s,
            what="the busy outcome",
            timeout=60,
        )
        assert state[1] == "callee_busy", state  # the phone's own 486 Busy Here

        # An answering phone.
        callee.reject_with = None
        placed = _place_call(phone_lk, CALLEE_NUMBER)
        session_id = placed["session_id"]
        call = callee.incoming(timeout=60, answer=False)
        call.start_recording(tmp_path / "callee-heard.wav")
        call.answer()
        assert call.wait_confirmed(10)
        wait_until(lambda: _session_state(phone_lk, session_id)[0] == "active", what="the answer", timeout=30)
        wait_until(lambda: _speech_spans(*call.heard_so_far()), what="the greeting on the phone", timeout=30)
        wait_until(lambda: _quiet_for(call, 1.5), what="the end of the greeting", timeout=30)

        # Asked to, the agent presses keys on the call (DTMF out, through the ledger).
        _question_wav(tmp_path / "keys.wav", KEYS_LINE)
        call.play(tmp_path / "keys.wav")
        assert call.wait_played(30), _story(phone_lk, session_id)
        assert call.wait_dtmf(3, timeout=40) == ["1", "2", "3"], _story(phone_lk, session_id)
        wait_until(lambda: _quiet_for(call, 1.5), what="the agent's reply", timeout=30)

        # Asked for a person, the agent transfers the call to the line's desk (SIP REFER):
        # the phone follows it, the desk answers, and the call leaves the platform.
        _question_wav(tmp_path / "transfer.wav", TRANSFER_LINE)
        call.play(tmp_path / "transfer.wav")  # the transfer may come before its silent tail has played
        targets = call.wait_transfer(timeout=60)
        assert targets and desk_uri in targets[0], (targets, _story(phone_lk, session_id))
        desk_call = desk.incoming(timeout=30)
        assert desk_call.wait_confirmed(10)
        state = wait_until(
            lambda: (s := _session_state(phone_lk, session_id))[0] == "ended" and s, what="the end", timeout=60
        )
        assert state[1] == "transferred", state
        desk_call.hangup()
    events = {kind: payload for _, kind, payload in phone_lk.events(session_id)}
    assert events["call.outcome"]["outcome"] == "answered", events
    assert events["call.transfer"]["to"] == f"{address}:{desk_port}", events
    assert "call.transfer_failed" not in events
    tools = phone_lk.query(
        "SELECT tool_name, status, result FROM tools_app_toolinvocation WHERE session_id = %s ORDER BY created_at",
        (session_id,),
    )
    assert [(t[0], t[1]) for t in tools] == [("send_keypad_digits", "succeeded"), ("transfer_call", "succeeded")], tools
    assert tools[0][2]["digits"] == "123"
    busy_events = [kind for _, kind, _ in phone_lk.events(busy["session_id"])]
    assert "call.outcome" in busy_events and "agent.joined" in busy_events, busy_events
