"""Moonshine, the offline STT: Piper speech decoded through livekit's `stt.recognize`, off
the event loop, at 16 and 8 kHz; and the factory's choice between it and PocketSphinx."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from livekit import rtc

from agents_app.models import Agent
from agents_app.runtime.providers import factory, moonshine, piper, sphinx

SENTENCE = "I would like to place an order for two pizzas."


def _words(text: str) -> list[str]:
    """Moonshine keeps case and punctuation ("Four, five."): compare the words only."""
    return re.findall(r"[a-z0-9']+", text.lower())


def _frames(text: str, rate: int | None = None) -> list[rtc.AudioFrame]:
    """Piper's speech in 20 ms frames, as the VAD hands them to the STT, at `rate`."""
    audio, piper_rate = piper.synthesize(text)
    if rate is not None:
        resampler = rtc.AudioResampler(input_rate=piper_rate, output_rate=rate, num_channels=1)
        frame = rtc.AudioFrame(audio.tobytes(), piper_rate, 1, len(audio))
        parts = [bytes(f.data) for f in resampler.push(frame)] + [bytes(f.data) for f in resampler.flush()]
        audio, piper_rate = np.frombuffer(b"".join(parts), dtype=np.int16), rate
    step = piper_rate // 50
    return [
        rtc.AudioFrame(audio[i : i + step].tobytes(), piper_rate, 1, len(audio[i : i + step]))
        for i in range(0, len(audio), step)
    ]


async def _recognize(frames: list[rtc.AudioFrame]) -> str:
    stt = moonshine.MoonshineSTT()
    try:
        event = await stt.recognize(frames)
    finally:
        await stt.aclose()
    return event.alternatives[0].text


async def test_moonshine_understands_piper():
    text = await _recognize(_frames(SENTENCE))
    assert _words(text) == _words(SENTENCE)


async def test_moonshine_understands_telephone_audio_at_8_khz():
    frames = _frames(SENTENCE, rate=8000)
    assert frames[0].sample_rate == 8000
    assert _words(await _recognize(frames)) == _words(SENTENCE)


async def test_it_returns_an_empty_transcript_for_no_audio_or_silence():
    silent = rtc.AudioFrame(b"\x00\x00" * 16000, 16000, 1, 16000)
    assert await _recognize([]) == ""
    # Moonshine's model says "You" to exact digital silence; it never gets to hear it.
    assert await _recognize([silent]) == ""


async def test_decoding_runs_off_the_event_loop():
    """A ticker on the loop keeps ticking while a sentence decodes. Were the decode run on
    the loop, the ticker could not run until it ended (a tick or two at most)."""
    frames = _frames("I need to speak with someone about a delivery that never arrived.")
    moonshine.warm()  # the model load is not what is measured
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker starts before the decode does
    ticks = 0
    text = await _recognize(frames)
    done.set()
    await task
    assert "delivery" in _words(text)
    # A decode takes 0.1-0.3 s here (40+ ticks); 5 leaves room for a very busy machine.
    assert ticks >= 5


async def test_the_pool_stops_and_starts_again():
    """A LiveKit job process stops the decoding threads at its end (factory.shutdown_offline);
    a later decode in the same process (the local agent host) starts a new pool."""
    assert _words(await _recognize(_frames("Yes, that's right."))) == ["yes", "that's", "right"]
    factory.shutdown_offline()
    assert moonshine._EXECUTOR is None
    assert _words(await _recognize(_frames("Yes, that's right."))) == ["yes", "that's", "right"]
    factory.shutdown_offline()


def test_the_fast_path_gives_what_the_public_method_gives():
    """decode_samples hands the numpy buffer straight to the C function (the public method
    copies it float by float holding the GIL); the transcript must be the same."""
    from moonshine_voice import ModelArch, get_model_path
    from moonshine_voice.transcriber import Transcriber

    from agents_app.runtime.providers.pcm import mono_16k

    samples = mono_16k(_frames(SENTENCE))
    transcriber = Transcriber(str(get_model_path("tiny-en")), model_arch=ModelArch.TINY, options=moonshine.OPTIONS)
    try:
        public = transcriber.transcribe_without_streaming((samples / 32768.0).tolist(), 16000)
    finally:
        transcriber.close()
    assert moonshine.decode_samples(samples) == " ".join(line.text.strip() for line in public.lines)


def test_the_factory_picks_moonshine_for_offline_stt_by_default():
    for model in ("", "moonshine/tiny-en"):
        agent = Agent(slug="x", name="x", stt_model=model, stt_phrases=["place an order"])
        stt = factory.build_provider("stt", factory.primary_spec("stt", agent), agent)
        assert isinstance(stt, moonshine.MoonshineSTT)
        assert (stt.provider, stt.model) == ("offline", "moonshine/tiny-en")


@pytest.mark.parametrize("model", ["pocketsphinx", "PocketSphinx", " POCKETSPHINX "])
def test_the_factory_picks_pocketsphinx_with_the_phrase_grammar_when_named(monkeypatch, model):
    warmed: list[list[str]] = []
    monkeypatch.setattr(sphinx, "warm_in_background", warmed.append)  # no processes spawned here
    agent = Agent(slug="x", name="x", stt_model=model, stt_phrases=["place an order", "  "])
    stt = factory.build_provider("stt", factory.primary_spec("stt", agent), agent)
    assert isinstance(stt, sphinx.PocketSphinxSTT)
    assert stt.model == "pocketsphinx/en-us+phrases"
    assert warmed == [["place an order"]]  # its pool starts with the job, not on the first words


def test_a_fallback_entry_can_name_pocketsphinx(monkeypatch):
    monkeypatch.setattr(sphinx, "warm_in_background", lambda phrases: None)
    agent = Agent(slug="x", name="x")
    stt = factory.build_provider("stt", {"provider": "offline", "model": "pocketsphinx"}, agent)
    assert stt.model == "pocketsphinx/en-us"


@pytest.mark.parametrize(
    ("lines", "text"),
    [
        (["You", "My card number is four."], "My card number is four."),
        (["You.", "Thursday, please."], "Thursday, please."),
        (["?", "My name is Sarah."], "My name is Sarah."),  # no word: not the caller's
        (["Thank you."], "Thank you."),
        (["You"], "You"),  # alone it may be what the caller said
        (["Okay.", "You"], "Okay. You"),  # only a lead-in is dropped
    ],
)
def test_a_lone_you_before_the_words_is_dropped(monkeypatch, lines, text):
    from types import SimpleNamespace

    transcript = SimpleNamespace(lines=[SimpleNamespace(text=line) for line in lines])
    monkeypatch.setattr(moonshine, "_transcribe", lambda transcriber, samples: transcript)
    monkeypatch.setattr(moonshine, "_IDLE", moonshine.queue.SimpleQueue())
    moonshine._IDLE.put(object())
    assert moonshine.decode_samples(np.full(1600, 1000, dtype=np.int16)) == text
