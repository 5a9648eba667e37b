"""Fallback provider chains per stage, built on livekit-agents' own FallbackAdapters.

An Agent lists extra providers per stage in `stt_fallbacks` / `llm_fallbacks` /
`tts_fallbacks` (each a list of {"provider": "openai"|"offline", "model": "...",
"endpoint": "<a name from OPENAI_ENDPOINTS>"}). The chain is the primary (Agent.<stage>_provider) followed by those
entries, in order. Failing over, marking a provider unavailable and probing it until it
recovers is done by `llm.FallbackAdapter` / `stt.FallbackAdapter` / `tts.FallbackAdapter`;
we write no retry loop of our own and turn the adapters' per-provider retries off
(`max_retry_per_*=0`) so a failure moves on to the next provider at once.

Per-stage attempt timeouts come from the agent's latency budget (see `stage_timeouts`),
so a hung provider fails over after a bounded, budgeted delay instead of leaving the
caller in silence.

`ChainMonitor` turns what the adapters and their providers report into session events
(`provider.error`, `provider.failover`, `provider.recovered`, `provider.stage_failed`) and
the `voice_provider_failures_total{stage,provider}` metric.
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

from agents_app.models import Agent, Provider
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


def build_entry(stage: str, entry: dict[str, Any], agent: Agent) -> Any:
    """One provider of a chain from a fallback entry."""
    from agents_app.providers import factory

    provider = entry.get("provider")
    model = entry.get("model") or ""
    if provider == Provider.OFFLINE:
        if stage == "stt":
            from agents_app.providers.sphinx import PocketSphinxSTT

            return PocketSphinxSTT(phrases=list(agent.stt_phrases or []), language=agent.language)
        if stage == "llm":
            from agents_app.providers.offline_llm import OfflineStandInLLM

            return OfflineStandInLLM()
        from agents_app.providers.piper import PiperTTS

        return PiperTTS()
    if provider != Provider.OPENAI:
        raise ValueError(f"unknown {stage} fallback provider {provider!r}")
    from livekit.plugins import openai

    kwargs = factory.openai_kwargs(entry.get("endpoint") or "")
    default = factory.DEFAULT_OPENAI_MODELS[stage]
    if stage == "stt":
        return openai.STT(model=model or default, language=agent.language, **kwargs)
    if stage == "llm":
        return openai.LLM(model=model or default, **kwargs)
    if entry.get("voice"):
        kwargs["voice"] = entry["voice"]
    return openai.TTS(model=model or default, **kwargs)


def _usable_entries(stage: str, agent: Agent) -> list[dict[str, Any]]:
    """The stage's fallback entries; a malformed one is skipped (and logged), so a typo in
    the admin costs that fallback, never the call."""
    raw = getattr(agent, f"{stage}_fallbacks", None) or []
    if not isinstance(raw, list):
        raw = [raw]
    usable: list[dict[str, Any]] = []
    for entry in raw:
        try:
            usable.extend(validate_fallbacks([entry]))
        except ValidationError as exc:
            logger.warning("agent %s: ignoring %s fallback %r: %s", agent.slug, stage, entry, exc.messages[0])
    return usable


def _needs_chain(primary: Any, entries: list[dict[str, Any]]) -> bool:
    # A networked primary is wrapped even alone, so its attempt timeout applies and its
    # outage is reported like any other; a lone offline stand-in is left as it is.
    return bool(entries) or getattr(primary, "provider", "") != "offline"


class TimedLLMFallback(llm.FallbackAdapter):
    """livekit's LLM FallbackAdapter, noting when each request started (for time lost)."""

    request_started_at: float = 0.0

    def chat(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().chat(**kwargs)


class TimedTTSFallback(tts.FallbackAdapter):
    """livekit's TTS FallbackAdapter, noting when each synthesis started (for time lost)."""

    request_started_at: float = 0.0

    def synthesize(self, text: str, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().synthesize(text, **kwargs)

    def stream(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().stream(**kwargs)


class TimedSTTFallback(stt.FallbackAdapter):
    """livekit's STT FallbackAdapter, noting when each recognition stream started."""

    request_started_at: float = 0.0

    def stream(self, **kwargs: Any) -> Any:
        self.request_started_at = time.time()
        return super().stream(**kwargs)


def build_chain(stage: str, agent: Agent, primary: Any, *, vad: Any = None) -> Any:
    """The stage's provider: `primary` alone, or a FallbackAdapter over the chain."""
    entries = _usable_entries(stage, agent)
    if not _needs_chain(primary, entries):
        return primary
    instances = [primary, *(build_entry(stage, entry, agent) for entry in entries)]
    timeouts = stage_timeouts(agent)
    if stage == "llm":
        # retry_on_chunk_sent: a stream cut off half way still fails over (the caller may
        # hear the first words twice) instead of ending the turn mid-sentence.
        return TimedLLMFallback(
            instances, attempt_timeout=timeouts["llm"], max_retry_per_llm=0, retry_on_chunk_sent=True
        )
    if stage == "tts":
        return TimedTTSFallback(instances, max_retry_per_tts=0)
    if vad is None and any(not i.capabilities.streaming for i in instances):
        from agents_app.worker.entrypoint import load_vad

        vad = load_vad()
    return TimedSTTFallback(instances, vad=vad, attempt_timeout=timeouts["stt"], max_retry_per_stt=0)


def chain_members(adapter: Any) -> list[Any]:
    """The providers of a FallbackAdapter, in order ([] for a plain provider)."""
    for attr in ("_llm_instances", "_tts_instances", "_stt_instances"):
        members = getattr(adapter, attr, None)
        if members is not None:
            return list(members)
    return []


def describe(provider: Any) -> str:
    """`provider:model` of one provider (a StreamAdapter shows the STT it wraps)."""
    inner = getattr(provider, "wrapped_stt", None) or getattr(provider, "_stt", None)
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
            members = chain_members(adapter)
            statuses = getattr(adapter, "_status", [])
            following = [
                describe(m)
                for i, m in enumerate(members)
                if m is not member and i < len(statuses) and statuses[i].available
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
    statuses = list(getattr(adapter, "_status", []))
    if member not in members or len(statuses) != len(members):
        return False
    index = members.index(member)
    return not statuses[index].available and any(s.available for s in statuses)


def _count_failure(stage: str, provider: str) -> None:
    try:
        from sessions_app import metrics

        metrics.PROVIDER_FAILURES.labels(stage=stage, provider=provider).inc()
    except Exception:  # metrics must never break a call
        logger.debug("could not count a provider failure", exc_info=True)
