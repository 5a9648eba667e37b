"""The `local` LLM provider: a real small model (SmolLM2-135M, packaged) served by
`manage.py runllm` (llama.cpp through xllamacpp), reached by the real
`livekit.plugins.openai.LLM`. Nothing here is scripted: the words come from the model, so
the tests check what the platform does with them (streaming, the first-token stage, the
heard-text rules on a barge-in, failing over when the server dies), never the words.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agents_app.models import Provider
from tests.pipeline.conftest import (
    LONG_REQUEST,
    CallDriver,
    TextJob,
    db,
    make_session,
    provider_events,
    turns_of,
    wait_turns,
    wait_until,
)
from tests.ports import free_port

pytestmark = [pytest.mark.pipeline, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
LOCAL_TTFT_BUDGET_MS = 3000


class LlmServer:
    """`manage.py runllm` in a subprocess, as the Procfile and the demo run it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self) -> LlmServer:
        env = {**os.environ, "LOCAL_LLM_PORT": str(self.port), "LOCAL_LLM_PARALLEL": "2", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runllm"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # llama.cpp's per-request timings
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until the model is loaded (about a second)
            self.output.append(line)
            if "local LLM ready" in line:
                return self
        raise AssertionError(f"runllm exited ({self.proc.wait()}) before it was ready: {''.join(self.output)}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def llm_server():
    server = LlmServer().start()
    yield server
    server.stop()


@pytest.fixture
def local_agent(agent, settings, llm_server):
    settings.LOCAL_LLM_PORT = llm_server.port
    agent.llm_provider = Provider.LOCAL
    agent.llm_fallbacks = [{"provider": "offline"}]
    # A CPU model on a shared 2-core machine: the first token of a cold prompt can take a
    # second or more, and the chain times out at 3 x this budget.
    agent.budget_llm_ttft_ms = LOCAL_TTFT_BUDGET_MS
    agent.save()
    return agent


class RecordingChat:
    """Wraps the job's real local LLM so a test can read every chat context it was sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from agents_app.runtime.providers import factory

        self.contexts: list[Any] = []
        build = factory.build_provider

        def build_recording(stage: str, spec: dict[str, Any], agent: Any) -> Any:
            instance = build(stage, spec, agent)
            if stage == "llm" and spec.get("provider") == Provider.LOCAL:
                chat = instance.chat

                def recording_chat(*, chat_ctx: Any, **kwargs: Any) -> Any:
                    self.contexts.append(chat_ctx.copy())
                    return chat(chat_ctx=chat_ctx, **kwargs)

                instance.chat = recording_chat
            return instance

        monkeypatch.setattr(factory, "build_provider", build_recording)

    def assistant_texts(self) -> list[str]:
        from livekit.agents.llm import ChatMessage

        items = self.contexts[-1].items
        return [
            " ".join((i.text_content or "").split())
            for i in items
            if isinstance(i, ChatMessage) and i.role == "assistant"
        ]


def test_runllm_serves_the_packaged_model_and_names_it(llm_server):
    assert llm_server.healthy()
    with urllib.request.urlopen(f"http://127.0.0.1:{llm_server.port}/v1/models", timeout=5) as response:
        assert b"smollm2-135m-instruct" in response.read()
    ready = "".join(llm_server.output)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in ready and "2 parallel calls" in ready


def test_runllm_says_what_is_wrong_with_a_missing_model(tmp_path):
    env = {**os.environ, "LOCAL_LLM_MODEL_PATH": str(tmp_path / "nothing.gguf"), "LOCAL_LLM_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "manage.py", "runllm"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "LOCAL_LLM_MODEL_PATH" in done.stderr and "no such file" in done.stderr


async def test_a_turn_streams_the_real_models_answer_and_records_its_first_token(local_agent):
    session_id = await db(make_session, local_agent)
    async with TextJob(session_id) as job:
        # livekit-plugins-openai at the local server (the chain's primary), never the stand-in.
        assert job.runtime.providers.describe()["llm"].endswith("smollm2-135m-instruct")
        result = await job.session.run(user_input="What are your opening hours?")
        message = result.expect[-1].event().item
        assert message.role == "assistant" and message.text_content.strip()

    turns = await wait_turns(session_id, 1)
    turn = turns[-1]
    assert turn["user_text"] == "What are your opening hours?"
    assert turn["generated_text"].strip() == message.text_content.strip()
    assert turn["llm_ttft_ms"] is not None and turn["llm_ttft_ms"] > 0  # the real model's first token
    assert not turn["error"]
    assert await db(provider_events, session_id) == []  # no failover: the model answered


async def test_the_agent_falls_over_to_the_stand_in_when_the_model_server_dies(agent, settings):
    server = await asyncio.to_thread(LlmServer().start)
    try:
        settings.LOCAL_LLM_PORT = server.port
        agent.llm_provider = Provider.LOCAL
        agent.llm_fallbacks = [{"provider": "offline"}]
        agent.budget_llm_ttft_ms = LOCAL_TTFT_BUDGET_MS
        await db(agent.save)
        session_id = await db(make_session, agent)
        async with TextJob(session_id) as job:
            first = await job.session.run(user_input="Hello, who are you?")
            assert first.expect[-1].event().item.text_content.strip()
            await asyncio.to_thread(server.kill)
            assert not server.healthy()
            second = await job.session.run(user_input="What time do you open tomorrow?")
            answer = second.expect[-1].event().item.text_content
            assert "Acme" in answer  # the offline stand-in names the prompt's company
        turns = await wait_turns(session_id, 2)
        assert not turns[1]["error"] and "Acme" in turns[1]["heard_text"]
        events = await db(provider_events, session_id)
        failover = next(e for e in events if e["type"] == "provider.failover")
        assert "smollm2-135m-instruct" in failover["provider"] and failover["to"].startswith("offline")
    finally:
        server.stop()


async def test_a_barge_in_keeps_only_what_the_caller_heard_of_the_models_answer(
    local_agent, prewarmed, monkeypatch, settings
):
    settings.LOCAL_LLM_MAX_TOKENS = 200  # a long answer to talk over
    chats = RecordingChat(monkeypatch)
    session_id = await db(make_session, local_agent)
    driver = await CallDriver(session_id).start()
    await driver.wait_speaking(True, timeout=60)
    await driver.wait_speaking(False, timeout=60)

    await driver.say(LONG_REQUEST)
    await driver.wait_speaking(True, timeout=60)
    await asyncio.sleep(2.0)
    await driver.say("wait a moment please I have a question")
    turns = await wait_turns(session_id, 3, timeout=90)
    await driver.wait_speaking(False, timeout=60)
    await driver.hangup()

    cut = (await db(turns_of, session_id))[1]
    assert cut["interrupted"] and cut["interrupt_source"] == "vad", cut
    heard, generated = " ".join(cut["heard_text"].split()), " ".join(cut["generated_text"].split())
    assert heard and generated.startswith(heard) and len(heard) < len(generated), (heard, generated)
    # The request that answered the interruption carried only what the caller heard.
    await wait_until(lambda: len(chats.contexts) >= 2, timeout=30)
    assistant = chats.assistant_texts()
    assert heard in assistant, assistant
    assert generated not in assistant
    assert turns[2]["llm_ttft_ms"] is not None
