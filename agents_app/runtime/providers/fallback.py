"""Fallback provider chains per stage, built on livekit-agents' own FallbackAdapters.

An Agent lists extra providers per stage in `stt_fallbacks` / `llm_fallbacks` /
`tts_fallbacks` (each a list of {"provider": "openai"|"offline", "model": "...",
"endpoint": "<a name from OPENAI_ENDPOINTS>"}). The chain is the primary
(Agent.<stage>_provider) followed by those entries, in order, each built by the one
builder, `factory.build_provider` (this module imports neither the factory nor the
worker; the VAD that segments a non-streaming STT is passed in). Failing over, marking a provider unavailable and probing it until it
recovers is done by `llm.FallbackAdapter` / `stt.FallbackAdapter` / `tts.FallbackAdapter`;
we write no retry loop of our own and turn the adapters' per-provider retries off
(`max_retry_per_*=0`) so a failure moves on to the next provider at once.

Per-stage attempt timeouts come from the agent's latency budget (see `stage_timeouts`),
so a hung provider fails over after a bounded, budgeted delay instead of leaving the
caller in silence.

`ChainMonitor` turns what the adapters and their providers report into session events
(`provider.error`, `provider.failover`, `provider.recovered`, `provider.stage_failed`) and
the `voice_provider_failures_total{stage,provider}` metric. It reads the chain's members
and their availability from our adapter subclasses (`_Members`), never from livekit's
private fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.agents.voice.agent_session import SessionConnectOptions

from agents_app.models import Agent
from agents_app.provider_config import validate_fallbacks

logger = logging.getLogger(__name__)

STAGES = ("stt", "llm", "tts")
# The attempt timeout of a stage is its budget times this factor, never below the floor:
# a budget is what a healthy provider should take, not the point to give up on it.
TIMEOUT_BUDGET_FACTOR = 3.0
TIMEOUT_FLOOR_S = 1.0


def stage_timeouts(agent: Agent) -> dict[str, float]:
    """Per-attempt timeouts (seconds) from the agent's budgets."""
    budgets = agent.budgets_ms()
    factor = float(getattr(settings, "PROVIDER_TIMEOUT_BUDGET_FACTOR", TIMEOUT_BUDGET_FACTOR))
    source = {"stt": budgets["stt"], "llm": budgets["llm_ttft"], "tts": budgets["tts_ttfb"]}
    return {stage: max(TIMEOUT_FLOOR_S, ms * factor / 1000.0) for stage, ms in source.items()}


def session_conn_options(agent: Agent) -> SessionConnectOptions:
    """AgentSession connect options: budgeted timeouts and no retries around the chain
    (the framework's default of 3 retries would replay the whole chain three times)."""
    timeouts = stage_timeouts(agent)
    return SessionConnectOptions(
        stt_conn_options=APIConnectOptions(max_retry=0, timeout=timeouts["stt"]),
        llm_conn_options=APIConnectOptions(max_retry=0, timeout=timeouts["llm"]),
        tts_conn_options=APIConnectOptions(max_retry=0, timeout=timeouts["tts"]),
        # A whole stage failing is answered with an apology and the call goes on; the
        # apology resets these counters, so this only ends a call that cannot talk at all.
        max_unrecoverable_errors=5,
    )


def usable_entries(stage: str, agent: Agent) -> list[dict[str, Any]]:
    """The stage's fallback entries; a malformed one is skipped (and logged), so a typo in
    the admin costs that fallback, never the call."""
    raw = getattr(agent, f"{stage}_fallbacks", None) or []
    if not isinstance(raw, list):
        raw = [raw]
    usable: list[dict[str, Any]] = []
    for entry in raw:
        try:
            usable.extend(validate_fallbacks([entry], stage=stage))
        except ValidationError as exc:
            logger.warning("agent %s: ignoring %s fallback %r: %s", agent.slug, stage, entry, exc.messages[0])
    return usable


class _Members:
    """What our FallbackAdapters know of their providers without reading livekit's private
    fields: the instances in chain order (as given: a non-streaming STT arrives already
    wrapped in a StreamAdapter) and which are available, kept from the adapter's own
    `<stage>_availability_changed` events (this handler is registered first, so later
    listeners see the new state)."""

    members: list[Any]
    available: list[bool]
    request_started_at: float = 0.0

    def _track(self, stage: str, members: list[Any]) -> None:
        self.members = list(members)
        self.available = [True] * len(self.members)

        def on_changed(ev: Any) -> None:
            member = getattr(ev, stage)
            for index, candidate in enumerate(self.members):
                if candidate is member:
                    self.available[index] = bool(ev.available)

        self.on(f"{stage}_availability_changed", on_changed)  # type: ignore[attr-defined]


class TimedLLMFallback(_Members, llm.FallbackAdapter):
    """livekit's LLM FallbackAdapter, noting when each request started (for time lost)."""

    def __init__(self, members: list[Any], **kwargs: Any) -> None:
        super().__init__(members, **kwargs)
        self._track("llm", members)

    def chat(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().chat(**kwargs)


class TimedTTSFallback(_Members, tts.FallbackAdapter):
    """livekit's TTS FallbackAdapter, noting when each synthesis started (for time lost)."""

    def __init__(self, members: list[Any], **kwargs: Any) -> None:
        super().__init__(members, **kwargs)
        self._track("tts", members)

    def synthesize(self, text: str, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().synthesize(text, **kwargs)

    def stream(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().stream(**kwargs)


class TimedSTTFallback(_Members, stt.FallbackAdapter):
    """livekit's STT FallbackAdapter, noting when each recognition stream started. A
    non-streaming member is wrapped in a StreamAdapter over `vad` here (and closed here)."""

    def __init__(self, members: list[Any], *, vad: Any, **kwargs: Any) -> None:
        self._own_adapters = [stt.StreamAdapter(stt=m, vad=vad) for m in members if not m.capabilities.streaming]
        wrapped = iter(self._own_adapters)
        members = [m if m.capabilities.streaming else next(wrapped) for m in members]
        super().__init__(members, vad=vad, **kwargs)
        self._track("stt", members)

    def stream(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().stream(**kwargs)

    async def aclose(self) -> None:
        await super().aclose()
        for adapter in self._own_adapters:
            await adapter.aclose()


def build_chain(stage: str, agent: Agent, instances: list[Any], *, vad: Any) -> Any:
    """The stage's provider from its instances (the primary first): a lone offline
    stand-in as it is, else a FallbackAdapter over all of them. A networked primary is
    wrapped even alone, so its attempt timeout applies and its outage is reported like
    any other."""
    if len(instances) == 1 and getattr(instances[0], "provider", "") == "offline":
        return instances[0]
    timeouts = stage_timeouts(agent)
    if stage == "llm":
        # retry_on_chunk_sent: a stream cut off half way still fails over (the caller may
        # hear the first words twice) instead of ending the turn mid-sentence.
        return TimedLLMFallback(
            instances, attempt_timeout=timeouts["llm"], max_retry_per_llm=0, retry_on_chunk_sent=True
        )
    if stage == "tts":
        return TimedTTSFallback(instances, max_retry_per_tts=0)
    return TimedSTTFallback(instances, vad=vad, attempt_timeout=timeouts["stt"], max_retry_per_stt=0)


def chain_members(adapter: Any) -> list[Any]:
    """The providers of one of our FallbackAdapters, in order ([] for a plain provider)."""
    return list(getattr(adapter, "members", None) or []) if isinstance(adapter, _Members) else []


def describe(provider: Any) -> str:
    """`provider:model` of one provider (a StreamAdapter shows the STT it wraps)."""
    inner = getattr(provider, "wrapped_stt", None)
    if inner is not None and getattr(provider, "provider", "") in ("", "livekit"):
        provider = inner
    return f"{getattr(provider, 'provider', '') or 'unknown'}:{getattr(provider, 'model', '') or 'unknown'}"


def stage_of(source: Any) -> str:
    if isinstance(source, llm.LLM):
        return "llm"
    if isinstance(source, stt.STT):
        return "stt"
    if isinstance(source, tts.TTS):
        return "tts"
    return "other"


@dataclass
class _LastError:
    error_class: str
    message: str
    at: float
    time_lost_ms: float | None


@dataclass
class ChainMonitor:
    """Subscribes to the chains of one job and reports failures.

    `record_event(type, payload)` is the job recorder's (a queue put: never blocks the
    loop). `on_stage_failed(stage, error)` is called when every provider of a stage
    failed (the job plays the apology there).
    """

    record_event: Callable[[str, dict[str, Any]], None]
    on_stage_failed: Callable[[str, str], None] | None = None
    failovers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    _adapters: dict[int, str] = field(default_factory=dict)
    _last: dict[int, _LastError] = field(default_factory=dict)
    _unsubscribe: list[Callable[[], None]] = field(default_factory=list)

    def watch(self, stage: str, provider: Any) -> None:
        members = chain_members(provider)
        if not members:
            return
        self._adapters[id(provider)] = stage
        for member in members:
            handler = self._error_handler(stage, provider, member)
            member.on("error", handler)
            self._unsubscribe.append(lambda m=member, h=handler: m.off("error", h))
        changed = f"{stage}_availability_changed"
        on_changed = self._availability_handler(stage, provider)
        provider.on(changed, on_changed)
        self._unsubscribe.append(lambda: provider.off(changed, on_changed))

    def close(self) -> None:
        for undo in self._unsubscribe:
            try:
                undo()
            except Exception:  # already detached
                pass
        self._unsubscribe.clear()

    def handles(self, source: Any) -> bool:
        return id(source) in self._adapters

    # -- the providers' own errors --------------------------------------------------------
    def _error_handler(self, stage: str, adapter: Any, member: Any) -> Callable[[Any], None]:
        def on_error(ev: Any) -> None:
            error = ev.error
            started = getattr(adapter, "request_started_at", 0.0) or 0.0
            at = float(getattr(ev, "timestamp", 0.0) or time.time())
            lost = round((at - started) * 1000.0, 1) if started and stage != "stt" else None
            info = _LastError(type(error).__name__, str(error)[:300], at, lost)
            self._last[id(member)] = info
            name = describe(member)
            if _is_probe(adapter, member):
                # The adapter's background check of a provider already marked down: the
                # caller lost nothing, so it is neither a provider error nor counted.
                self.record_event(
                    "provider.probe_failed", {"stage": stage, "provider": name, "error_class": info.error_class}
                )
                return
            payload = {
                "stage": stage,
                "provider": name,
                "from": name,  # the dashboard timeline shows stage, from, to and error
                "error_class": info.error_class,
                "error": _headline(info.error_class, lost, info.message),
                "time_lost_ms": lost,
                "recoverable": bool(getattr(ev, "recoverable", False)),
            }
            self.errors.append(payload)
            _count_failure(stage, getattr(member, "provider", "") or name)
            self.record_event("provider.error", payload)

        return on_error

    # -- the adapter's availability --------------------------------------------------------
    def _availability_handler(self, stage: str, adapter: Any) -> Callable[[Any], None]:
        def on_changed(ev: Any) -> None:
            member = getattr(ev, stage)
            name = describe(member)
            if ev.available:
                self.record_event("provider.recovered", {"stage": stage, "provider": name})
                return
            last = self._last.get(id(member))
            following = [
                describe(m) for m, up in zip(adapter.members, adapter.available, strict=True) if m is not member and up
            ]
            error_class = last.error_class if last else "unknown"
            lost = last.time_lost_ms if last else None
            payload = {
                "stage": stage,
                "provider": name,
                "from": name,
                "to": following[0] if following else None,
                "error_class": error_class,
                "error": _headline(error_class, lost, ""),
                "time_lost_ms": lost,
            }
            self.failovers.append(payload)
            self.record_event("provider.failover", payload)

        return on_changed

    # -- the session's error event (a whole stage failed) -------------------------------
    def session_error(self, ev: Any) -> bool:
        """Handle the AgentSession `error` event. True when the metric was counted here."""
        source = ev.source
        stage = stage_of(source)
        chained = self.handles(source)
        if not getattr(ev.error, "recoverable", False):
            error = getattr(ev.error, "error", ev.error)
            message = f"{type(error).__name__}: {error}"
            started = getattr(source, "request_started_at", 0.0) or 0.0
            lost = round((time.time() - started) * 1000.0, 1) if started and stage != "stt" else None
            self.record_event(
                "provider.stage_failed",
                {
                    "stage": stage,
                    "providers": [describe(m) for m in chain_members(source)] or [describe(source)],
                    "error_class": type(error).__name__,
                    "error": _headline(type(error).__name__, lost, "every provider of the stage failed"),
                    "time_lost_ms": lost,
                },
            )
            if not chained:
                # A lone provider: no per-provider error event came from a chain.
                payload = {
                    "stage": stage,
                    "provider": describe(source),
                    "error_class": type(error).__name__,
                    "error": str(error)[:300],
                    "time_lost_ms": lost,
                    "recoverable": False,
                }
                self.errors.append(payload)
                self.record_event("provider.error", payload)
                _count_failure(stage, getattr(source, "provider", "") or "unknown")
            if self.on_stage_failed is not None and stage in STAGES:
                self.on_stage_failed(stage, message)
            return True
        return chained


def _headline(error_class: str, lost_ms: float | None, message: str) -> str:
    """One line for the dashboard timeline: what failed, how much time it cost the caller."""
    head = error_class + (f" after {lost_ms:.0f} ms" if lost_ms is not None else "")
    return f"{head}: {message}" if message else head


def _is_probe(adapter: Any, member: Any) -> bool:
    """An error of a member already marked unavailable while another member is available
    comes from the adapter's recovery probe, not from a caller's request."""
    members = chain_members(adapter)
    if member not in members:
        return False
    return not adapter.available[members.index(member)] and any(adapter.available)


def _count_failure(stage: str, provider: str) -> None:
    try:
        from sessions_app import metrics

        metrics.PROVIDER_FAILURES.labels(stage=stage, provider=provider).inc()
    except Exception:  # metrics must never break a call
        logger.debug("could not count a provider failure", exc_info=True)
