"""The scriptable SIP phone (simulator/sip_phone.py): two phones of this process call each
other over loopback UDP, with real RTP through the PCMU codec."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents_app.runtime.simulator.sip_phone import PhoneCall, SipPhone, SipPhoneError

AMPLITUDE = 0.5 * 32767
ROOT = Path(__file__).resolve().parents[2]


def _tone_wav(path: Path, hz: float, seconds: float, rate: int) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes())
    return path


def _loud_span(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """First and last 20 ms window (in seconds) whose RMS is above a tenth of the tone's."""
    window = rate // 50
    frames = samples[: len(samples) // window * window].astype(np.float64).reshape(-1, window)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > AMPLITUDE / np.sqrt(2) / 10)
    assert len(loud), "no audio above the noise floor"
    return loud[0] * window / rate, (loud[-1] + 1) * window / rate


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def _eventually(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def caller() -> Iterator[SipPhone]:
    with SipPhone(user="caller", display="Test Caller") as phone:
        yield phone


@pytest.fixture
def callee() -> Iterator[SipPhone]:
    with SipPhone(user="callee", auto_answer=True) as phone:
        yield phone


def _connect(caller: SipPhone, callee: SipPhone, **kwargs) -> tuple[PhoneCall, PhoneCall]:
    outgoing = caller.call(callee.uri(), **kwargs)
    incoming = callee.incoming(timeout=5)
    assert outgoing.wait_confirmed(5) and incoming.wait_confirmed(5)
    return outgoing, incoming


def test_each_end_hears_the_others_wav_in_its_time_span_through_pcmu(
    caller: SipPhone, callee: SipPhone, tmp_path: Path
) -> None:
    outgoing = caller.call(callee.uri(), headers={"X-Test-Case": "audio"})
    outgoing.start_recording(tmp_path / "caller-heard.wav")  # before the answer: wired at media start
    incoming = callee.incoming(timeout=5)
    incoming.start_recording(tmp_path / "callee-heard.wav")
    assert outgoing.wait_confirmed(5) and incoming.wait_confirmed(5)
    recording_from = time.monotonic()
    assert (outgoing.state, outgoing.last_status_code, outgoing.last_reason) == ("CONFIRMED", 200, "OK")
    assert outgoing.codec == incoming.codec == "PCMU/8000"
    assert incoming.remote_headers["x-test-case"] == "audio"
    assert "Test Caller" in incoming.remote_headers["from"]
    assert outgoing.call_id and outgoing.call_id == incoming.call_id

    time.sleep(0.5)
    played_at = time.monotonic() - recording_from
    assert outgoing.play(_tone_wav(tmp_path / "1k.wav", 1000, 1.5, 8000)) == pytest.approx(1.5)
    assert incoming.play(_tone_wav(tmp_path / "440.wav", 440, 1.0, 16000)) == pytest.approx(1.0)
    assert outgoing.wait_played(5) and incoming.wait_played(5)
    time.sleep(0.3)  # the jitter buffer's tail
    outgoing.hangup()
    assert outgoing.wait_disconnected(5) and incoming.wait_disconnected(5)

    for call, seconds, hz in ((incoming, 1.5, 1000), (outgoing, 1.0, 440)):
        samples, rate = call.received_audio()
        assert rate == 16000
        start, end = _loud_span(samples, rate)
        assert end - start == pytest.approx(seconds, abs=0.1)
        assert start == pytest.approx(played_at, abs=0.25)  # silence until the far end played
        tone = samples[int((start + 0.1) * rate) : int((end - 0.1) * rate)]
        assert _peak_hz(tone, rate) == pytest.approx(hz, abs=10)
        # G.711 keeps the level (within a dB or two), and nothing rings on after the tone.
        assert np.abs(tone).max() == pytest.approx(AMPLITUDE, rel=0.2)
        assert np.abs(samples[int((end + 0.1) * rate) :]).max() < AMPLITUDE / 20


def test_dtmf_digits_arrive_in_order_at_the_far_end_only(caller: SipPhone, callee: SipPhone) -> None:
    outgoing, incoming = _connect(caller, callee)
    assert outgoing.send_dtmf("12#") == "rfc2833"
    assert incoming.wait_dtmf(3, timeout=5) == ["1", "2", "#"]
    incoming.send_dtmf("9")
    assert outgoing.wait_dtmf(1, timeout=5) == ["9"]
    time.sleep(0.2)
    assert incoming.dtmf_received == ["1", "2", "#"]
    with pytest.raises(SipPhoneError, match="not DTMF"):
        outgoing.send_dtmf("1x")


def test_hanging_up_disconnects_both_ends_and_ends_the_call(caller: SipPhone, callee: SipPhone) -> None:
    outgoing, incoming = _connect(caller, callee)
    assert not incoming.wait_disconnected(0.2)
    incoming.hangup()
    assert incoming.wait_disconnected(5) and outgoing.wait_disconnected(5)
    assert outgoing.state == incoming.state == "DISCONNECTED"
    with pytest.raises(SipPhoneError, match="ended"):
        outgoing.send_dtmf("1")
    outgoing.hangup()  # a no-op on an ended call


def test_closing_a_phone_hangs_up_its_calls(callee: SipPhone) -> None:
    phone = SipPhone(user="leaving")
    outgoing, incoming = _connect(phone, callee)
    phone.close()
    assert outgoing.is_disconnected and incoming.wait_disconnected(5)
    with pytest.raises(SipPhoneError, match="closed"):
        phone.call(callee.uri())


@pytest.mark.parametrize(("code", "reason"), [(486, "Busy Here"), (480, "Temporarily Unavailable"), (603, "Decline")])
def test_a_refused_call_reports_the_sip_status(caller: SipPhone, callee: SipPhone, code: int, reason: str) -> None:
    callee.reject_with = code
    call = caller.call(callee.uri())
    assert call.wait_disconnected(5)
    assert (call.state, call.last_status_code, call.last_reason) == ("DISCONNECTED", code, reason)
    assert not call.wait_confirmed(0.1)
    with pytest.raises(SipPhoneError, match=f"{code} {reason}"):
        call.expect_confirmed(1)


# A call hung up before any response keeps its pjsua slot until Timer B (32 s), and the
# wheel has 4 slots per process: this one runs in a process of its own.
_NOBODY_LISTENS = """
import json, socket
from agents_app.runtime.simulator.sip_phone import SipPhone, SipPhoneError
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
with SipPhone(user="caller") as phone:
    call = phone.call(f"sip:nobody@127.0.0.1:{port}")
    try:
        call.expect_confirmed(0.5)
        error = None
    except SipPhoneError as exc:
        error = str(exc)
    waiting = [call.state, call.last_status_code]
    call.hangup()
    ended = call.wait_disconnected(2)
    print(json.dumps({"error": error, "waiting": waiting, "ended": ended, "final": [call.last_status_code, call.last_reason]}))
"""


def test_a_call_to_a_port_nobody_listens_on_rings_out_until_hung_up() -> None:
    # UDP brings no error back: pjsip retransmits the INVITE until Timer B (32 s) ends it
    # with 408, unless the caller gives up first.
    done = subprocess.run(
        [sys.executable, "-c", _NOBODY_LISTENS], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    result = json.loads(done.stdout)  # nothing but the JSON on stdout (pjlib's start-up log is muted)
    assert result["error"].endswith("not confirmed within 0.5 s (CALLING, no response)")
    assert result["waiting"] == ["CALLING", None]
    assert result["ended"] is True
    assert result["final"] == [487, "Request Terminated"]


def test_a_ringing_call_the_caller_gives_up_on_ends_at_both_ends(caller: SipPhone) -> None:
    with SipPhone(user="desk") as desk:  # auto_answer off: it rings
        outgoing = caller.call(desk.uri())
        ringing = desk.incoming(timeout=5, answer=False)
        assert not outgoing.wait_confirmed(0.3)
        outgoing.hangup()  # CANCEL
        assert outgoing.wait_disconnected(5) and ringing.wait_disconnected(5)
        assert (outgoing.last_status_code, outgoing.last_reason) == (487, "Request Terminated")


def test_an_unanswered_incoming_call_rings_until_answered_and_is_recorded_from_the_answer(
    caller: SipPhone, tmp_path: Path
) -> None:
    with SipPhone(user="desk") as desk:  # auto_answer off
        outgoing = caller.call(desk.uri())
        ringing = desk.incoming(timeout=5, answer=False)
        assert outgoing.wait_disconnected(0.3) is False
        assert (outgoing.state, outgoing.last_status_code, outgoing.last_reason) == ("EARLY", 180, "Ringing")
        assert ringing.state == "EARLY" and not ringing.media_active  # 180 sent
        ringing.start_recording(tmp_path / "desk.wav")
        ringing.answer()
        assert outgoing.wait_confirmed(5) and ringing.wait_confirmed(5)
        outgoing.play(_tone_wav(tmp_path / "tone.wav", 700, 0.5, 8000))
        assert outgoing.wait_played(5)
        time.sleep(0.2)
        samples, rate = ringing.received_audio()  # closes the recording while the call goes on
        assert not ringing.is_disconnected
        start, end = _loud_span(samples, rate)
        assert end - start == pytest.approx(0.5, abs=0.1)
        assert _peak_hz(samples[int(start * rate) : int(end * rate)], rate) == pytest.approx(700, abs=10)


def test_incoming_raises_when_no_call_comes(callee: SipPhone) -> None:
    with pytest.raises(SipPhoneError, match="no incoming call"):
        callee.incoming(timeout=0.2)


def test_calls_reach_the_phone_whose_port_they_name_among_phones_on_one_address(
    caller: SipPhone, callee: SipPhone
) -> None:
    with SipPhone(user="callee", auto_answer=True) as twin:  # same user and address, own port
        call = caller.call(twin.uri())
        assert twin.incoming(timeout=5).wait_confirmed(5) and call.wait_confirmed(5)
        with pytest.raises(SipPhoneError):
            callee.incoming(timeout=0.2)


def test_a_refer_is_recorded_and_followed_to_the_target(caller: SipPhone, callee: SipPhone) -> None:
    with SipPhone(user="sales", auto_answer=True) as target:
        outgoing, incoming = _connect(caller, callee)
        incoming.transfer(target.uri("queue"))  # the callee sends REFER to the caller
        assert outgoing.wait_transfer(5) == [target.uri("queue")]
        transferred = target.incoming(timeout=5)
        assert transferred.wait_confirmed(5)
        assert outgoing.transfer_call is not None and outgoing.transfer_call.wait_confirmed(5)
        assert outgoing.transfer_call.remote_uri == target.uri("queue")
        assert "callee" in transferred.remote_headers["referred-by"]
        assert _eventually(lambda: (200, "OK") in incoming.transfer_status)  # NOTIFY: the target answered


def test_a_refer_is_declined_when_transfers_are_not_followed(caller: SipPhone, callee: SipPhone) -> None:
    caller.follow_transfers = False
    outgoing, incoming = _connect(caller, callee)
    incoming.transfer("sip:elsewhere@127.0.0.1:9")
    assert outgoing.wait_transfer(5) == ["sip:elsewhere@127.0.0.1:9"]
    assert outgoing.transfer_call is None
    assert _eventually(lambda: incoming.transfer_status)
    assert incoming.transfer_status == [(603, "Decline")]
    assert outgoing.state == incoming.state == "CONFIRMED"


async def test_it_works_from_asyncio_worker_threads(caller: SipPhone, callee: SipPhone) -> None:
    async def one(line: str) -> tuple[bool, bool]:
        call = await asyncio.to_thread(caller.call, callee.uri(line))
        confirmed = await asyncio.to_thread(call.wait_confirmed, 5)
        await asyncio.to_thread(call.hangup)
        return confirmed, await asyncio.to_thread(call.wait_disconnected, 5)

    assert await asyncio.gather(one("a"), one("b")) == [(True, True), (True, True)]
    users = sorted(callee.incoming(timeout=1).remote_headers["to"].split("sip:")[1].split("@")[0] for _ in "ab")
    assert users == ["a", "b"]


def test_bad_input_is_refused_with_a_clear_error(caller: SipPhone, tmp_path: Path) -> None:
    with pytest.raises(SipPhoneError, match="not a SIP URI"):
        caller.call("not a uri")
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0" * 3200)
    with SipPhone(user="desk") as desk:
        call = caller.call(desk.uri())
        with pytest.raises(SipPhoneError, match="mono 16-bit"):
            call.play(stereo)
        with pytest.raises(SipPhoneError, match="nothing was recorded"):
            call.received_audio()
    with pytest.raises(ValueError):
        caller.reject_with = 200


def test_what_was_heard_can_be_read_while_the_recording_goes_on(
    caller: SipPhone, callee: SipPhone, tmp_path: Path
) -> None:
    outgoing, incoming = _connect(caller, callee)
    incoming.start_recording(tmp_path / "heard.wav")
    outgoing.play(_tone_wav(tmp_path / "tone.wav", 1000, 1.0, 8000))
    assert outgoing.wait_played(5)
    time.sleep(0.3)
    so_far, rate = incoming.heard_so_far()
    start, end = _loud_span(so_far, rate)
    assert 0.8 <= end - start <= 1.2, (start, end)
    assert incoming.media_active and not incoming.is_disconnected  # still recording, call going on
    outgoing.play(_tone_wav(tmp_path / "tone2.wav", 1000, 0.5, 8000))
    assert outgoing.wait_played(5)
    time.sleep(0.3)
    whole, _ = incoming.received_audio()
    assert len(whole) > len(so_far)  # the recording went on after the peek
    assert _loud_span(whole, rate)[1] > end + 0.4


def test_configure_again_with_the_running_settings_is_accepted_and_other_ones_refused(caller: SipPhone) -> None:
    """Two test modules of one process (the livekit tier's demo and phone tests) both configure."""
    from dataclasses import asdict, replace

    from agents_app.runtime.simulator import sip_phone

    running = sip_phone._settings
    sip_phone.configure(**asdict(running))  # no error: the same settings
    other = replace(running, codecs=("PCMA/8000",) if running.codecs != ("PCMA/8000",) else ("PCMU/8000",))
    with pytest.raises(SipPhoneError, match="before the first SipPhone"):
        sip_phone.configure(**asdict(other))
    assert sip_phone._settings == running
