"""bench/conversation_quality.py's pure parts: the words (normalisation, WER), the telephone
band, the pause lines' audio and the classification of what happened in a call. No timing
is measured or asserted here; the benchmark itself is run by hand (`make bench`)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.bench_modules import load_bench

cq = load_bench("conversation_quality")


# --- words ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("My account number is 457291.", "my account number is four five seven two nine one"),
        ("Please send it to 12 Baker St.", "please send it to twelve baker street"),
        ("On the 23rd of March", "on the twenty third of march"),
        ("the 5th of May, the 1st, the 12th, the 20th", "the fifth of may the first the twelfth the twentieth"),
        ("Call me at 7:30, or 7:00, or 7:05", "call me at seven thirty or seven or seven oh five"),
        ("Forty-two Maple Avenue", "forty two maple avenue"),
        ("I'd like it, OK? It's Dr. Patel.", "i would like it okay it is doctor patel"),
        ("555-2189", "five five five two one eight nine"),
        ("4,572 and 07", "four five seven two and zero seven"),
        ("“Stop” — WAIT!", "stop wait"),
        ("Call me to-morrow, baker-street", "call me tomorrow baker street"),
    ],
)
def test_normalize_spells_numbers_and_drops_case_and_punctuation(text: str, words: str) -> None:
    assert cq.normalize(text) == words.split()


def test_every_scripted_reference_is_already_in_words() -> None:
    lines = [*cq.WER_LINES, *(f"{a} {b}" for a, b in cq.PAUSE_LINES), *cq.INTERRUPTIONS]
    for line in lines:
        assert not re.search(r"\d", line), line
        assert " ".join(cq.normalize(line)) == re.sub(r"[^a-z' ]", "", line.lower()).strip(), line


def test_word_errors_counts_substitutions_deletions_and_insertions() -> None:
    ref = "send it to twelve baker street".split()
    assert cq.word_errors(ref, ref) == 0
    assert cq.word_errors(ref, "send it to twelve baker street now".split()) == 1  # insertion
    assert cq.word_errors(ref, "send it twelve baker street".split()) == 1  # deletion
    assert cq.word_errors(ref, "send it to twenty baker shriek".split()) == 2  # substitutions
    assert cq.word_errors(ref, []) == len(ref)
    assert cq.word_errors([], ["uh"]) == 1


def test_wer_is_all_errors_over_all_reference_words_after_normalising() -> None:
    pairs = [
        ("My number is four five seven two.", "my number is 4572"),  # 0 errors once normalised
        ("Please send it to twelve Baker Street.", "Fleece send it to 12 Baker shriek"),  # 2 errors
    ]
    assert cq.wer(pairs) == round(2 / (7 + 7), 4)
    assert cq.wer([("Stop.", "")]) == 1.0
    assert cq.wer([]) is None


# --- audio ---------------------------------------------------------------------------------
def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    trim = len(x) // 10  # the edges of a cut tone are not in the band
    return float(np.sqrt(np.mean(x[trim:-trim] ** 2)))


@pytest.mark.parametrize("rate", [22050, 16000, 8000])
def test_telephone_band_keeps_speech_frequencies_and_sends_8khz(rate: int) -> None:
    tone = _tone(1000, rate)
    out, out_rate = cq.telephone_band(tone, rate)
    assert out_rate == 8000
    assert out.dtype == np.int16
    assert abs(len(out) - len(tone) * 8000 / rate) <= 1
    assert 0.95 < _rms(out) / _rms(tone) < 1.05


@pytest.mark.parametrize("freq", [60, 150, 3700, 5000, 9000])
def test_telephone_band_removes_what_a_phone_line_does_not_carry(freq: float) -> None:
    rate = 22050
    tone = _tone(freq, rate)
    out, _ = cq.telephone_band(tone, rate)
    assert _rms(out) < 0.02 * _rms(tone)


def test_band_limit_edges_are_inside_the_band() -> None:
    rate = 16000
    for freq in (320, 3380):  # just inside: kept
        assert _rms(cq.band_limit(_tone(freq, rate), rate, 300, 3400)) > 0.95 * _rms(_tone(freq, rate))
    for freq in (240, 3460):  # beyond the 50 Hz edges: gone
        assert _rms(cq.band_limit(_tone(freq, rate), rate, 300, 3400)) < 0.02 * _rms(_tone(freq, rate))


def _turn(
    text: str, at: float, *, interrupted: bool = True, source: str = "client", index: int = 0, **stages: float
) -> dict:
    return {
        "index": index,
        "user_text": text,
        "generated_text": "Thanks for calling.",
        "heard_text": "Thanks",
        "interrupted": interrupted,
        "interrupt_source": source if interrupted else "",
        "started_at": at,
        **{f"{stage}_ms": value for stage, value in stages.items()},
    }


def _texts(groups: list[list[dict]]) -> list[list[str]]:
    return [[t["user_text"] for t in group] for group in groups]


def _lines(*spoken: tuple[str, float]) -> list:
    return [cq.Said(kind="wer", reference=text, wall_start=at, start=at, end=at + 1) for text, at in spoken]


def test_assign_turns_gives_each_line_the_turns_committed_in_its_time_window() -> None:
    said = _lines(("My name is Sarah Johnson.", 10.0), ("Please send it to Baker Street.", 20.0), ("Stop.", 30.0))
    turns = [
        _turn("", 1.0, index=0),  # the greeting: no caller words
        _turn("my name is eric johnson", 11.0, index=1),
        _turn("place in the partial", 21.0, index=2),  # garbled: its window decides
        _turn("to baker street", 22.0, index=3),  # a line split in two
        _turn("dr", 31.0, index=4),  # garbled: its window decides
    ]
    assert _texts(cq.assign_turns(said, turns)) == [
        ["my name is eric johnson"],
        ["place in the partial", "to baker street"],
        ["dr"],
    ]
    assert _texts(cq.assign_turns(said, [])) == [[], [], []]


def test_assign_turns_gives_a_late_piece_of_a_line_back_to_its_line_by_its_words() -> None:
    said = _lines(
        ("I want to move my appointment to Thursday afternoon please.", 10.0),
        ("Can you explain everything?", 20.0),
        ("Mm-hmm", 23.0),
        ("Tell me everything about it.", 30.0),
    )
    turns = [
        _turn("i want to move my appointment", 17.8, index=4),
        _turn("the thursday afternoon please", 21.9, index=5),  # committed during the next line
        _turn("can you explain everything", 24.1, index=6),  # …so this one during the backchannel
        _turn("eleven", 26.5, index=7),
        _turn("tell me everything about it", 31.0, index=8),
    ]
    assert _texts(cq.assign_turns(said, turns)) == [
        ["i want to move my appointment", "the thursday afternoon please"],
        ["can you explain everything"],
        ["eleven"],
        ["tell me everything about it"],
    ]


def test_assign_turns_keeps_the_order_and_never_goes_back_in_time() -> None:
    said = _lines(("Please explain the refund policy.", 10.0), ("Explain how the delivery works.", 20.0))
    # Words of the second line, committed before it was said: they cannot be its.
    early = [_turn("explain how the delivery works", 15.0, index=1)]
    assert _texts(cq.assign_turns(said, early)) == [["explain how the delivery works"], []]
    # A later turn never goes to an earlier line than the turn before it.
    turns = [_turn("explain how the delivery works", 21.0, index=1), _turn("refund policy", 22.0, index=2)]
    assert _texts(cq.assign_turns(said, turns)) == [[], ["explain how the delivery works", "refund policy"]]
    # Caller turns committed before the first line are not the caller's lines.
    assert _texts(cq.assign_turns(said, [_turn("hello", 5.0, index=1)])) == [[], []]


def test_a_pause_line_is_split_by_a_second_turn_or_the_agent_speaking_between_halves() -> None:
    assert not cq.is_split(1, False)
    assert cq.is_split(2, False)
    assert cq.is_split(1, True)
    stretches = [(10.0, 11.0), (14.2, 15.0)]
    assert cq.agent_started_between(stretches, 14.0, 15.5)
    assert cq.agent_started_between(stretches, 11.5, 14.2)  # (start, end]: the end is in
    assert not cq.agent_started_between(stretches, 11.5, 14.19)
    assert not cq.agent_started_between(stretches, 14.2, 16.0)  # the start is not
    assert not cq.agent_started_between(stretches, 10.5, 14.0)  # audio under way is not a start


def test_a_backchannel_is_a_false_interruption_when_the_answer_was_cut_by_it_or_it_became_a_turn() -> None:
    cut_by_benchmark = _turn("Explain everything.", 1.0, source="client")
    cut_by_voice = _turn("Explain everything.", 1.0, source="vad")
    assert cq.false_interruption(cut_by_benchmark, []) == []
    assert cq.false_interruption(_turn("Explain.", 1.0, interrupted=False), []) == []
    assert cq.false_interruption(None, []) == []
    assert cq.false_interruption(cut_by_voice, []) == ["answer stored as interrupted (source vad)"]
    reasons = cq.false_interruption(cut_by_benchmark, [_turn("Mm.", 2.0)])
    assert reasons == ["caller turn stored: 'Mm.'"]
    assert len(cq.false_interruption(cut_by_voice, [_turn("yeah", 2.0)])) == 2
    # Heard going quiet (a pause it would have resumed from) counts, stored or not.
    assert cq.false_interruption(cut_by_benchmark, [], 580.0) == ["the agent went quiet 580 ms after it began"]


def test_a_real_interruption_is_honoured_when_the_agent_stops_in_time_and_the_answer_is_cut_by_it() -> None:
    by_caller = _turn("Explain.", 1.0, source="vad")
    by_benchmark = _turn("Explain.", 1.0, source="client")
    assert cq.interruption_honoured(650.0, by_caller) == (True, "")
    assert cq.interruption_honoured(2000.0, by_caller) == (True, "")
    assert cq.interruption_honoured(2001.0, by_caller)[0] is False
    assert cq.interruption_honoured(None, by_caller) == (False, "the agent went on speaking until the benchmark cut it")
    honoured, why = cq.interruption_honoured(800.0, by_benchmark)  # paused, then resumed: cut by the benchmark
    assert not honoured and "not interrupted" in why
    assert cq.interruption_honoured(800.0, None) == (True, "")  # no stored answer: the ear decides


def test_a_trial_counts_only_when_said_over_the_answer_to_its_question() -> None:
    barge = cq.Said(kind="backchannel", reference="Yeah", wall_start=22.0, start=22.0, end=22.5, barged_in=True)
    assert cq.trial_invalid(barge, _turn("Explain everything.", 21.0)) == ""
    assert "no caller turn" in cq.trial_invalid(barge, None)
    assert "committed after" in cq.trial_invalid(barge, _turn("Explain everything.", 22.5))
    barge.barged_in = False
    assert "not audible" in cq.trial_invalid(barge, _turn("Explain everything.", 21.0))


def test_agent_stopped_at_is_the_start_of_a_silence_longer_than_a_sentence_pause() -> None:
    stretches = [(10.0, 12.0), (12.3, 14.0), (15.0, 16.0)]
    assert cq.agent_stopped_at(stretches, 11.0, None) == 14.0  # 0.3 s between sentences is no stop
    assert cq.agent_stopped_at(stretches, 11.0, 15.5) == 14.0  # quiet before the caller's cut
    assert cq.agent_stopped_at(stretches, 11.0, 14.05) is None  # ended by the caller's own cut
    assert cq.agent_stopped_at(stretches, 11.0, 14.3) is None  # the cut fell in a sentence pause
    assert cq.agent_stopped_at([(10.0, 11.9), (12.55, 14.0)], 11.0, 14.5) is None  # the TTS fell behind
    assert cq.agent_stopped_at(stretches, 14.5, None) == 16.0  # nothing after it: stopped
    assert cq.agent_stopped_at(stretches, 16.5, None) is None  # nothing heard after `since`
    assert cq.agent_stopped_at(stretches, 11.0, None, quiet=0.25) == 12.0
    # Cut, then a quick answer to what the caller said (its turn committed at 12.1): a stop.
    assert cq.agent_stopped_at(stretches, 11.0, None, new_answer_at=12.1) == 12.0
    assert cq.agent_stopped_at(stretches, 11.0, None, new_answer_at=12.4) == 14.0  # 12.3: same answer


def _said(kind: str, reference: str, wall: float, **extra: object) -> object:
    said = cq.Said(kind=kind, reference=reference, wall_start=wall, start=wall, end=wall + 1.0)
    for key, value in extra.items():
        setattr(said, key, value)
    return said


def test_trial_plan_puts_the_barge_ins_on_the_last_lines_alternating() -> None:
    assert cq.trial_plan(3, 1, 1) == [None, ("backchannel", 0), ("interrupt", 0)]
    plan = cq.trial_plan(12, 5, 4)
    assert plan[:3] == [None, None, None]
    assert [kind for kind, _ in plan[3:]] == ["backchannel", "interrupt"] * 4 + ["backchannel"]
    assert sorted(n for kind, n in plan[3:] if kind == "backchannel") == [0, 1, 2, 3, 4]
    assert cq.trial_plan(2, 5, 4) == [("backchannel", 0), ("interrupt", 0)]  # more trials than lines


def test_tally_scores_a_call() -> None:
    said = [
        _said("wer", "My name is Sarah Johnson.", 10.0, heard_gap_ms=700.0),
        _said("wer", "Please send it to twelve Baker Street.", 20.0, heard_gap_ms=900.0),
        _said("pause", "I want to move it to Thursday.", 30.0, half_end=30.4, end=31.5, heard_gap_ms=5000.0),
        _said("wer", "Can you explain everything?", 40.0, heard_gap_ms=800.0),
        _said("backchannel", "Mm-hmm", 42.0, barged_in=True, voiced_at=42.0, cut_at=44.5, trigger=3),
        _said("wer", "Tell me everything about it.", 50.0, heard_gap_ms=1100.0),
        _said("interrupt", "Stop.", 52.0, barged_in=True, voiced_at=52.0, trigger=5),
        _said("wer", "Explain how the delivery works.", 60.0, answered=False),
        _said("interrupt", "Wait, no.", 62.0, barged_in=False, trigger=7),
    ]
    turns = [
        _turn("", 1.0),  # greeting
        _turn("My name is Sarah Johnson.", 11.0, eou=400.0, stt=390.0, e2e=600.0),
        _turn("Please send it to", 21.0),  # a line split in two: scored joined
        _turn("twelve Baker Street", 21.5, eou=500.0, stt=480.0, e2e=800.0),
        _turn("I want to move it to Thursday.", 32.0),
        _turn("Can you explain everything?", 41.0, source="client", eou=450.0),
        _turn("Tell me everything about it.", 51.0, source="vad"),
        _turn("Stop.", 53.0),
    ]
    stretches = [
        (30.9, 31.2),  # the agent spoke between the pause line's halves
        (32.5, 33.0),
        (41.5, 44.52),  # the answer, on through the backchannel until the caller's cut
        (51.5, 52.7),  # the answer, stopped 0.7 s into "Stop."
        (53.1, 53.4),  # the answer to "Stop." (committed at 53.0), 0.4 s later
    ]
    tally = cq.Tally()
    tally.add_call("piper", said, turns, stretches)
    summary = tally.summary()

    # Every line's words right but the unanswered last one's (5 of 26 words).
    assert summary["wer"]["piper"] == round(5 / 26, 4) and summary["wer"]["telephone"] is None
    assert summary["wer"]["lines"] == {"piper": 5, "telephone": 0}
    assert summary["pause_splits"] == {"lines": 1, "split": 1, "rate": 1.0}
    assert summary["backchannels"]["trials"] == 1 and summary["backchannels"]["false_interruptions"] == 0
    assert summary["backchannels"]["audio_stopped"] == 0
    assert summary["real_interruptions"]["trials"] == 1 and summary["real_interruptions"]["honoured"] == 1
    assert summary["real_interruptions"]["stopped_after_ms_p50"] == 700.0
    assert summary["invalid_trials"] == 1  # "Wait, no." after a line that got no answer
    assert summary["unanswered_lines"] == 1
    # Heard: the WER lines, never the pause line or the barge-ins.
    assert summary["heard_ms"]["turns"] == 4
    assert summary["heard_ms"]["p50"] == 800.0 and summary["heard_ms"]["p99"] == 1100.0
    assert summary["heard_ms"]["p50_by_set"] == {"piper": 800.0}
    assert summary["heard_ms"]["stages_p50"]["eou"] == 450.0  # nearest rank of 400, 450, 500
    assert summary["turns"] == {"caller": 7, "agent": 8}
    kinds = [f["kind"] for f in summary["failures"]]
    assert kinds == ["pause_split", "no_answer", "wer_piper", "interrupt_trial_invalid"]
    assert summary["failures"][3]["why"] == "no caller turn stored for the line"
    assert summary["failures"][0]["agent_spoke_between_halves"] is True


def test_tally_reports_what_went_wrong() -> None:
    said = [
        _said("wer", "My account number is four five seven two.", 10.0, heard_gap_ms=700.0),
        _said("wer", "Can you explain everything?", 20.0, heard_gap_ms=800.0),
        _said("backchannel", "Yeah", 22.0, barged_in=True, voiced_at=22.0, trigger=1),
        _said("wer", "Can you explain everything?", 30.0, heard_gap_ms=800.0),
        _said("interrupt", "Stop.", 32.0, barged_in=True, voiced_at=32.0, cut_at=36.0, trigger=3),
    ]
    turns = [
        _turn("my count number is 4572", 11.0),
        _turn("Can you explain everything?", 21.0, source="vad"),
        _turn("yeah", 23.0),
        _turn("Can you explain everything?", 31.0, source="client"),
        _turn("dr", 37.0),
    ]
    stretches = [(21.0, 22.6), (24.0, 24.5), (31.0, 36.02)]  # stopped by "Yeah"; on through "Stop."
    tally = cq.Tally()
    tally.add_call("telephone", said, turns, stretches)
    summary = tally.summary()
    assert summary["wer"]["telephone"] == round(1 / (8 + 4 + 4), 4)
    assert summary["backchannels"] == {
        "trials": 1,
        "false_interruptions": 1,
        "rate": 1.0,
        "stored": 1,
        "audio_stopped": 1,
        "backchannel_events": 0,
    }
    assert summary["real_interruptions"]["honoured"] == 0 and summary["real_interruptions"]["miss_rate"] == 1.0
    failures = {f["kind"]: f for f in summary["failures"]}
    assert failures["wer_telephone"]["stored"] == "my count number is 4572" and failures["wer_telephone"]["errors"] == 1
    assert failures["backchannel"]["why"] == [
        "answer stored as interrupted (source vad)",
        "caller turn stored: 'yeah'",
        "the agent went quiet 600 ms after it began",
    ]
    assert "until the benchmark cut it" in failures["interruption_missed"]["why"]


def _summary(**overrides: object) -> dict:
    summary = {
        "wer": {"piper": 0.04, "telephone": 0.08},
        "pause_splits": {"lines": 5, "split": 0},
        "backchannels": {"trials": 5, "false_interruptions": 0},
        "real_interruptions": {"honoured_rate": 0.95},
        "heard_ms": {"p50": 600.0, "p99": 1000.0},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        summary[section][name] = value
    return summary


def test_targets_are_the_issues_limits() -> None:
    assert all(cq.side_targets(_summary()).values())
    failing = {
        "wer__piper": ("wer_piper_le_5pct", 0.0501),
        "wer__telephone": ("wer_telephone_le_8pct", 0.081),
        "pause_splits__split": ("pause_splits_0", 1),
        "backchannels__false_interruptions": ("backchannel_interruptions_0", 1),
        "real_interruptions__honoured_rate": ("real_interruptions_honoured_ge_95pct", 0.94),
        "heard_ms__p50": ("heard_p50_le_600ms", 600.1),
        "heard_ms__p99": ("heard_p99_le_1000ms", 1000.1),
    }
    for key, (target, value) in failing.items():
        targets = cq.side_targets(_summary(**{key: value}))
        assert [name for name, ok in targets.items() if not ok] == [target], key
    # Nothing measured passes nothing.
    missing = cq.side_targets(
        _summary(
            wer__piper=None,
            pause_splits__lines=0,
            backchannels__trials=0,
            real_interruptions__honoured_rate=None,
            heard_ms__p50=None,
        )
    )
    assert [name for name, ok in missing.items() if ok] == ["wer_telephone_le_8pct", "heard_p99_le_1000ms"]
