"""The browser call page in Chromium, through the real LiveKit server.

Chromium's fake microphone plays a WAV of Piper speech (silence, a question, silence, looped).
The page joins the room through the real server, hears the greeting (energy on the
received track, measured with WebAudio in the page), its question is answered (a stored
turn with the caller's words), the page reports what it heard of that turn (its own WebAudio
heard-gap measurement, paired with the turn and sent to the browser endpoint), and the
Interrupt button cuts the agent through its RPC.
"""

from __future__ import annotations

import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from agents_app.runtime.management.commands.seed_demo import DEMO_PASSWORD
from tests.browser.conftest import CHROMIUM_FLAGS, save_screenshot
from tests.livekit.conftest import LiveKitPlatform

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(300)]

QUESTION = "What are your opening hours?"
MEDIA_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
# WebAudio in the page: the loudest RMS of the agent's received track over ~1.5 s.
RECEIVED_ENERGY_JS = """
async () => {
  const el = document.querySelector('#audio-sink audio');
  if (!el || !el.srcObject) return -1;
  const ctx = new AudioContext();
  // resume() can wait for a user gesture forever; the autoplay flag should make it instant.
  await Promise.race([ctx.resume(), new Promise((r) => setTimeout(r, 1000))]);
  const analyser = ctx.createAnalyser();
  ctx.createMediaStreamSource(el.srcObject).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let loudest = 0;
  for (let i = 0; i < 30; i++) {
    await new Promise((r) => setTimeout(r, 50));
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    loudest = Math.max(loudest, Math.sqrt(sum / buf.length));
  }
  await ctx.close();
  return loudest;
}
"""


def _microphone_wav(path: Path) -> Path:
    """10 s of room noise, the question, 14 s of room noise; 48 kHz mono 16-bit."""
    from agents_app.runtime.providers.piper import synthesize

    speech, rate = synthesize(QUESTION)
    target = 48000
    positions = np.arange(0, len(speech) - 1, rate / target)
    speech48 = np.interp(positions, np.arange(len(speech)), speech.astype(np.float64)).astype(np.int16)
    rng = np.random.default_rng(3)

    def noise(seconds: float) -> np.ndarray:
        return rng.integers(-3, 4, int(seconds * target)).astype(np.int16)

    audio = np.concatenate([noise(10), speech48, noise(14)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(target)
        out.writeframes(audio.tobytes())
    return path


def _turns(lk: LiveKitPlatform, session_id: str) -> list[tuple[str, bool, str]]:
    sid = session_id if lk.pg_db else session_id.replace("-", "")
    return [
        (user_text, bool(interrupted), source)
        for user_text, interrupted, source in lk.query(
            "SELECT user_text, interrupted, interrupt_source FROM sessions_app_turn WHERE session_id = %s "
            'ORDER BY "index"',
            (sid,),
        )
    ]


def _heard(lk: LiveKitPlatform, session_id: str) -> list[tuple[int, str, float, object]]:
    """The turns with a heard report: (index, user_text, heard_gap_ms, heard_reported_at)."""
    sid = session_id if lk.pg_db else session_id.replace("-", "")
    return list(
        lk.query(
            'SELECT "index", user_text, heard_gap_ms, heard_reported_at FROM sessions_app_turn '
            'WHERE session_id = %s AND heard_gap_ms IS NOT NULL ORDER BY "index"',
            (sid,),
        )
    )


def _wait(predicate, what: str, timeout: float, page=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    if page is not None:
        save_screenshot(page, "livekit-call-page-failure")
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_the_call_page_talks_to_the_agent_through_the_real_server(lk: LiveKitPlatform, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    wav = _microphone_wav(tmp_path / "caller.wav")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[*CHROMIUM_FLAGS, *MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            page = browser.new_page()
            page.goto(f"{lk.base_url}/login/?next=/call/")
            page.fill("input[name=username]", "staff")
            page.fill("input[name=password]", DEMO_PASSWORD)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_url("**/call/")
            page.uncheck("#auto-interrupt")  # this test interrupts with the button
            page.select_option("#agent", "demo-scripted")  # a long scripted answer to interrupt
            page.click("#start")

            state = lambda: page.get_attribute("#agent-state", "data-state")  # noqa: E731
            _wait(lambda: state() == "speaking", "the agent greeting the caller", 60, page)
            energy = page.evaluate(RECEIVED_ENERGY_JS)
            assert energy > 0.01, f"the greeting arrived silent (RMS {energy})"
            shown = _wait(lambda: page.text_content("#session-id") or "", "the session id", 10, page)
            session_id = shown.replace("Session", "").strip()

            # The fake microphone asks its question ~10 s in; the answer is a stored turn.
            turns = _wait(lambda: [t for t in _turns(lk, session_id) if t[0]], "an answered question", 60, page)
            assert "hours" in turns[0][0].lower(), turns

            _wait(lambda: state() == "speaking", "the agent answering", 30, page)
            page.click("#interrupt")
            _wait(lambda: state() != "speaking", "the agent to stop talking", 10, page)
            _wait(
                lambda: [t for t in _turns(lk, session_id) if t[1] and t[2] == "client"],
                "a turn interrupted by the client (the page's RPC)",
                30,
                page,
            )

            # The page measured the gap before the answer (WebAudio on its microphone and the
            # agent's track) and reported it for the question's turn through the browser API.
            # (The fake microphone loops: on a slow run the question may come round again and
            # be answered and reported too.)
            heard = _wait(lambda: _heard(lk, session_id), "the page's heard report for the question", 30, page)
            for _index, user_text, gap_ms, reported_at in heard:
                assert "hours" in user_text.lower() and reported_at is not None, heard
                assert gap_ms > 0, heard
            _wait(
                lambda: page.get_attribute("#heard", "data-turn") in {str(r[0]) for r in _heard(lk, session_id)},
                "the page's heard figure",
                10,
                page,
            )
            events = [e[2]["index"] for e in lk.events(session_id) if e[1] == "turn.heard"]
            for index, *_ in heard:
                assert events.count(index) == 1, f"turn {index}: one report, once: {events}"

            page.click("#end")
            _wait(
                lambda: (
                    lk.query(
                        "SELECT state FROM sessions_app_voicesession WHERE id = %s",
                        (session_id if lk.pg_db else session_id.replace("-", ""),),
                    )[0][0]
                    == "ended"
                ),
                "the session to end",
                20,
                page,
            )
        finally:
            browser.close()
