"""The platform's own Prometheus metrics, fed from the same turn records the DB gets.

Defined once here and registered in the default registry, so django-prometheus's
`/metrics` (web) and the agent worker's own exporter both expose them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

# 50 ms up to 5 s: the range where voice latency lives.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

TURN_STAGE_SECONDS = Histogram(
    "voice_turn_stage_seconds",
    "Latency of each stage of a voice turn.",
    ["stage", "agent"],
    buckets=LATENCY_BUCKETS,
)
TURNS = Counter("voice_turns_total", "Recorded voice turns.", ["agent", "interrupted"])
INTERRUPTS = Counter("voice_interrupts_total", "Agent speech cut short.", ["agent", "source"])
RECONNECTS = Counter("voice_reconnects_total", "Caller reconnects to an existing session.", ["agent"])
TOOL_CALLS = Counter("voice_tool_calls_total", "Tool invocations.", ["tool", "status", "replayed"])
BUDGET_BREACHES = Counter("voice_budget_breaches_total", "Turn stages over the agent's budget.", ["stage", "agent"])
ACTIVE_SESSIONS = Gauge(
    "voice_active_sessions",
    "Voice sessions being served by this process.",
    multiprocess_mode="livesum",
)
DASHBOARD_EVENTS_DROPPED = Counter(
    "voice_dashboard_events_dropped_total", "Live dashboard events dropped (the DB stays the truth).", ["reason"]
)
PROVIDER_FAILURES = Counter("voice_provider_failures_total", "AI provider errors and failovers.", ["stage", "provider"])
RECORDER_QUEUE_DEPTH = Gauge("voice_recorder_queue_depth", "Records waiting for the agent's DB writer.")
RECORDER_RETRIES = Counter(
    "voice_recorder_retries_total", "Writes of the agent's DB writer retried because the database was unavailable."
)
# The caller's own measure of a turn (PUT …/turns/{index}/heard), so fed by the web process.
HEARD_GAP_SECONDS = Histogram(
    "voice_heard_gap_seconds",
    "Caller-heard gap: the caller's last speech sample → the first agent audio it heard.",
    ["agent"],
    buckets=LATENCY_BUCKETS,
)
HEARD_GAP_MISMATCHES = Counter(
    "voice_heard_gap_mismatch_total",
    "Turns whose caller-heard gap differs from the platform's e2e by more than HEARD_GAP_TOLERANCE_MS.",
    ["agent"],
)
# Counted when an agent job starts serving a session, so rules can divide interrupts and
# reconnects by sessions ("interrupt rate per session", "reconnect frequency").
SESSIONS_SERVED = Counter("voice_sessions_served_total", "Voice sessions an agent job started serving.", ["agent"])


@contextlib.contextmanager
def track_active_session(*, agent: str = "") -> Iterator[None]:
    """Wrap one agent job: `voice_active_sessions` +1 for its duration, sessions served +1.

    The gauge uses multiprocess mode "livesum", so in a multi-process agent worker the
    exporter adds up live job processes only (a SIGKILLed job's +1 is pruned by
    `voiceplatform.metrics_server`).
    """
    SESSIONS_SERVED.labels(agent=agent or "unknown").inc()
    ACTIVE_SESSIONS.inc()
    try:
        yield
    finally:
        ACTIVE_SESSIONS.dec()
