"""Offline providers: Piper synthesis, PocketSphinx decoding, the LLM stand-in, the factory.

Moonshine, the offline STT by default, has its own file (test_moonshine_stt.py)."""

from __future__ import annotations

import audioop  # deprecated (removed in 3.13); Python 3.11 here

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from livekit import rtc
from livekit.agents import function_tool
from livekit.agents.llm import ChatContext

from agents_app.models import Agent, Provider
from agents_app.runtime.providers import factory, piper, sphinx
from agents_app.runtime.providers.offline_llm import OfflineStandInLLM, company_from_instructions


@function_tool
async def place_order(item: str, quantity: int) -> str:
    """Place an order for a number of items."""
    return "ok"


@function_tool
async def charge_wallet(amount: float) -> str:
    """Charge the customer's prepaid wallet balance."""
    return "ok"


def test_piper_synthesis_is_deterministic():
    first, rate = piper.synthesize("Your order is on its way.")
    second, _ = piper.synthesize("Your order is on its way.")
    assert rate == 22050 and first.dtype == np.int16
    assert len(first) > rate  # over a second of speech
    assert np.array_equal(first, second)


async def test_piper_tts_drops_its_leading_near_silence():
    """The caller hears the answer from its first sound: the stream starts LEAD_PAD_SECONDS
    before it, and the rest of the audio is Piper's, sample for sample (the last frame padded
    with silence by the emitter)."""
    raw = piper.synthesize_chunks("Thanks for calling Acme.")[0]
    first_sound = int(np.flatnonzero(np.abs(raw.astype(np.int32)) > piper.LEAD_LEVEL)[0])
    assert first_sound / 22050 > 0.02  # Piper's own lead, which the stream drops
    tts = piper.PiperTTS()
    frames = [event.frame async for event in tts.synthesize("Thanks for calling Acme.")]
    await tts.aclose()
    streamed = np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in frames])
    pad = int(22050 * piper.LEAD_PAD_SECONDS)
    kept = raw[first_sound - pad :]
    assert np.array_equal(streamed[: len(kept)], kept) and not streamed[len(kept) :].any()  # frames padded
    assert np.abs(streamed[:pad].astype(np.int32)).max() <= piper.LEAD_LEVEL


def test_trimming_keeps_audio_that_is_all_quiet():
    quiet = np.zeros(100, dtype=np.int16)
    assert piper.trim_lead(quiet, 22050) is quiet


def _frames(text: str) -> list[rtc.AudioFrame]:
    audio, rate = piper.synthesize(text)
    return [rtc.AudioFrame(audio.tobytes(), rate, 1, len(audio))]


def test_pocketsphinx_understands_piper():
    pcm = sphinx.prepare_pcm(_frames("I would like to place an order for two pizzas."))
    assert sphinx.decode_pcm(pcm) == "i would like to place an order for two pizzas"


def test_a_phrase_list_narrows_recognition_to_those_phrases():
    pcm = sphinx.prepare_pcm(_frames("Place an order please."))
    text = sphinx.decode_pcm(pcm, ("place an order", "please", "cancel my order", "xyzzyplugh"))
    assert text == "place an order please"


def _telephone(text: str) -> list[rtc.AudioFrame]:
    """Piper speech as a phone call brings it: 8 kHz, a G.711 mu-law round trip, back at 48 kHz,
    then half a second of the line's silence."""
    audio, rate = piper.synthesize(text)
    frames = [rtc.AudioFrame(audio.tobytes(), rate, 1, len(audio))]
    narrow = np.concatenate([_resampled(frames, 8000)])
    encoded = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(narrow.tobytes(), 2), 2), dtype=np.int16)
    wide = _resampled([rtc.AudioFrame(encoded.tobytes(), 8000, 1, len(encoded))], 48000)
    wide = np.concatenate([wide, np.zeros(24000, dtype=np.int16)])
    return [rtc.AudioFrame(wide.tobytes(), 48000, 1, len(wide))]


def _resampled(frames: list[rtc.AudioFrame], rate: int) -> np.ndarray:
    resampler = rtc.AudioResampler(input_rate=frames[0].sample_rate, output_rate=rate, num_channels=1)
    out = [f for frame in frames for f in resampler.push(frame)] + list(resampler.flush())
    return np.frombuffer(b"".join(bytes(f.data) for f in out), dtype=np.int16)


PHONE_PHRASES = (
    "I would like to place an order for two pizzas.",
    "What time do you open tomorrow?",
    "Can you send it to my office?",
)


def test_a_phrase_grammar_on_telephone_audio_adds_no_stray_word():
    """Measured by bench/phone_heard.py: the line's noise after the speech became "i" (the
    first word of a phrase), and the end of turn then waited 1.5 s for a sentence ending on it."""
    for sentence, words in (
        (PHONE_PHRASES[0], "i would like to place an order for two pizzas"),
        (PHONE_PHRASES[2], "can you send it to my office"),
    ):
        assert sphinx.decode_pcm(sphinx.prepare_pcm(_telephone(sentence)), PHONE_PHRASES) == words


@pytest.mark.parametrize(
    ("hypothesis", "kept"),
    [
        ("can you send it to my office i", "can you send it to my office"),
        ("can you send it to my office", "can you send it to my office"),
        ("can you send it to my office what time", "can you send it to my office what time"),
        ("what time do you open tomorrow can you send it to my office", None),
        ("i", "i"),
        ("", ""),
    ],
)
def test_only_a_lone_word_after_the_last_whole_phrase_is_dropped(hypothesis, kept):
    phrases = tuple(p.lower().rstrip("?.") for p in PHONE_PHRASES)
    assert sphinx.without_stray_word(hypothesis, phrases) == (hypothesis if kept is None else kept)


def test_prepared_audio_is_padded_and_never_exact_zero_silence():
    silent = rtc.AudioFrame(b"\x00\x00" * 1600, 16000, 1, 1600)
    pcm = np.frombuffer(sphinx.prepare_pcm([silent]), dtype=np.int16)
    assert len(pcm) == 1600 + 2 * int(sphinx.PAD_SECONDS * sphinx.SAMPLE_RATE)
    assert np.count_nonzero(pcm) > len(pcm) // 2 and np.abs(pcm).max() <= sphinx.NOISE_LSB


def _ctx(instructions: str, *user: str) -> ChatContext:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content=instructions)
    for text in user:
        ctx.add_message(role="user", content=text)
    return ctx


def test_the_stand_in_names_the_company_from_the_prompt():
    assert company_from_instructions("You are the support agent of Acme Pizza. Be brief.") == "Acme Pizza"
    text, call = OfflineStandInLLM().reply_for(_ctx("You answer calls for Globex.", "hello"), [])
    assert call is None and "Globex" in text and "hello" in text


def test_the_stand_in_calls_the_tool_the_caller_mentions():
    llm = OfflineStandInLLM()
    tools = [charge_wallet, place_order]
    _, call = llm.reply_for(_ctx("Acme", "please place an order for three pizzas"), tools)
    assert call is not None and call.name == "place_order"
    assert '"quantity": 3' in call.arguments
    _, call = llm.reply_for(_ctx("Acme", "charge my prepaid wallet"), tools)
    assert call is not None and call.name == "charge_wallet"  # by description keywords
    _, call = llm.reply_for(_ctx("Acme", "what are your hours"), tools)
    assert call is None


def test_the_stand_in_gives_a_long_answer_when_asked_to_explain():
    short, _ = OfflineStandInLLM().reply_for(_ctx("of Acme", "hi"), [])
    long, _ = OfflineStandInLLM().reply_for(_ctx("of Acme", "please explain your delivery service"), [])
    assert len(long.split()) > 60 > len(short.split())


def test_the_factory_builds_offline_providers_by_default(db):
    agent = Agent(slug="x", name="x")
    providers = factory.build_providers(agent)
    assert providers.describe() == {
        "stt": "offline:moonshine/tiny-en",
        "llm": "offline:offline-stand-in",
        "tts": "offline:piper/en_US-joe-medium",
    }


def test_the_factory_refuses_openai_without_a_key_or_base_url(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    agent = Agent(slug="x", name="x", llm_provider=Provider.OPENAI)
    with pytest.raises(ImproperlyConfigured):
        factory.build_provider("llm", factory.primary_spec("llm", agent), agent)


def test_the_factory_uses_the_openai_plugin_with_the_configured_base_url(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    agent = Agent(slug="x", name="x", llm_provider=Provider.OPENAI, llm_model="llama3.2")
    llm = factory.build_provider("llm", factory.primary_spec("llm", agent), agent)
    assert type(llm).__module__.startswith("livekit.plugins.openai")
    assert llm.model == "llama3.2"
    assert "127.0.0.1:11434" in str(llm._client.base_url)
