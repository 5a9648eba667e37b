"""Run N simulated calls, C at a time, and summarize them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents_app.runtime.simulator.api import PlatformClient
from agents_app.runtime.simulator.caller import CallResult, SimulatedCall
from agents_app.runtime.simulator.livekit_transport import LiveKitTransport
from agents_app.runtime.simulator.scenarios import Scenario
from agents_app.runtime.simulator.summary import summarize
from agents_app.runtime.simulator.transport import CallerTransport, HostTransport


@dataclass
class RunOptions:
    scenarios: list[Scenario]
    calls: int
    concurrency: int
    base_url: str
    api_key: str
    agent_api_key: str = ""
    local_agent: str = "url"  # "url": connect where the API says; "inprocess": host the jobs here
    record_dir: Path | None = None
    shared_db: bool = True


def transport_factory(options: RunOptions, host: Any) -> Callable[..., CallerTransport]:
    """A transport for the url the API returned: local:// is the local agent host (or the
    in-process one), ws(s):// or http(s):// a LiveKit server, self-hosted or Cloud."""

    def make(url: str, **kwargs: Any) -> CallerTransport:
        if host is not None:
            return HostTransport(host=host, **kwargs)
        if url.startswith("local://"):
            return HostTransport(**kwargs)
        return LiveKitTransport(**kwargs)

    return make


async def run_calls(options: RunOptions, progress: Callable[[str], None]) -> tuple[dict[str, Any], list[CallResult]]:
    """Calls cycle through the given scenarios; returns (summary, per-call results)."""
    host = None
    if options.local_agent == "inprocess":
        from agents_app.runtime.worker.local_server import AgentHost

        host = AgentHost(allow_control=True)
    make_transport = transport_factory(options, host)
    # Scenarios with an `outage:` get a scripted outage server and their own agent.
    from agents_app.runtime.simulator import outages

    outage_run = await outages.prepare(options.scenarios, inprocess=host is not None, progress=progress)
    scenarios = outage_run.scenarios
    api = PlatformClient(base_url=options.base_url, api_key=options.api_key, agent_api_key=options.agent_api_key)
    semaphore = asyncio.Semaphore(max(1, options.concurrency))

    async def one(number: int) -> CallResult:
        scenario = scenarios[(number - 1) % len(scenarios)]
        async with semaphore:
            call = SimulatedCall(
                scenario=scenario,
                number=number,
                api=api,
                make_transport=make_transport,
                progress=progress,
                shared_db=options.shared_db,
            )
            result = await call.run()
        if options.shared_db and result.session_id:
            try:  # provider failovers/errors and the network impairment, for the summary
                result.detail.update(await outages.provider_events(result.session_id))
                if call.transport is not None and call.transport.impairment is not None:  # LiveKit
                    result.detail["impairment"].append(call.transport.impairment.summary())
            except Exception as exc:
                progress(f"call {number:>3} could not read its provider events: {exc}")
        if options.record_dir is not None and result.recording is not None:
            stem = f"{number:03d}-{scenario.name}-{result.session_id or 'nosession'}"
            wav, _ = await asyncio.to_thread(result.recording.write, options.record_dir, stem, result.detail)
            progress(f"call {number:>3} recorded {wav}")
        return result

    await _presynthesize(options.scenarios, progress)
    try:
        results = await asyncio.gather(*(one(n) for n in range(1, options.calls + 1)))
    finally:
        await api.close()
        if host is not None:
            await host.shutdown()
        await outage_run.stop()
    return summarize(results), list(results)


async def _presynthesize(scenarios: list[Scenario], progress: Callable[[str], None]) -> None:
    """Synthesize every line up front, so a caller speaks (and barges in) on time."""
    from agents_app.runtime.simulator.caller import speech_for

    lines: list[str] = []
    for scenario in scenarios:
        for step in scenario.steps:
            text = step.args if step.kind == "say" else (step.arg("say") if step.kind == "barge_in" else None)
            if text and text not in lines:
                lines.append(str(text))
    progress(f"preparing {len(lines)} caller line(s) with the local TTS…")
    for text in lines:
        await speech_for(text)
