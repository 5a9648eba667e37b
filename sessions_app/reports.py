"""Post-call reports: KPIs and an extractive summary, stored on the session, and their
signed webhook delivery to the API client.

`session_report_create` is idempotent: a session keeps the first report built for it
and one delivery id, so every delivery attempt of that report carries the same id.
Webhook receivers verify `X-Voice-Signature` and de-duplicate on `X-Voice-Delivery`
(delivery is at-least-once); see docs/background-work.md.

An attempt sends only under the session's send lease (`session_report_delivery_claim`):
one attempt at a time, and none once a success is recorded. A send whose answer was lost
(the worker died, the connection broke) is sent again with the same delivery id; that is
the one duplicate a receiver can see (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import aiohttp
from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents_app.models import STAGE_KEYS
from sessions_app.models import FINAL_STATES, SessionEvent, Turn, VoiceSession
from voiceplatform import outbound, signing

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
SUMMARY_MAX_SENTENCES = 3
SUMMARY_SENTENCE_CHARS = 240
WEBHOOK_TIMEOUT_S = 10.0
# How long a claimed attempt owns the send: its POST ends within WEBHOOK_TIMEOUT_S, the rest
# is room for recording the outcome. A dead holder's lease lapses after this; the same
# message redelivered (its worker died) takes it over at once.
DELIVERY_LEASE_S = WEBHOOK_TIMEOUT_S + 20.0
SIGNATURE_HEADER = signing.SIGNATURE_HEADER
DELIVERY_HEADER = "X-Voice-Delivery"
EVENT_HEADER = "X-Voice-Event"
WEBHOOK_EVENT = "session.report"


class ReportNotReady(Exception):
    """The session is still live; a report describes a finished call."""


# --- KPIs ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 1)


def _distribution(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}


def report_kpis(*, session: VoiceSession, turns: list[Turn]) -> dict[str, Any]:
    stages = {
        stage: [getattr(t, f"{stage}_ms") for t in turns if getattr(t, f"{stage}_ms") is not None]
        for stage in STAGE_KEYS
    }
    interrupt_sources = Counter(t.interrupt_source or "vad" for t in turns if t.interrupted)
    breaches_by_stage: Counter[str] = Counter()
    for turn in turns:
        breaches_by_stage.update(set(turn.breaches or []))  # once per turn and stage
    tool_records = [call for turn in turns for call in (turn.tool_calls or []) if isinstance(call, dict)]
    tool_status = Counter(str(call.get("status") or "unknown") for call in tool_records)
    interrupts = sum(interrupt_sources.values())
    return {
        "turns": len(turns),
        "e2e_ms": _distribution(stages["e2e"]),
        "ttfa_ms": _distribution(stages["ttfa"]),
        "tts_ttfb_ms": _distribution(stages["tts_ttfb"]),
        "stages_ms": {stage: _distribution(values) for stage, values in stages.items()},
        "interrupts": {
            "total": interrupts,
            "vad": interrupt_sources.get("vad", 0),
            "client": interrupt_sources.get("client", 0),
            "per_turn": round(interrupts / len(turns), 3) if turns else 0.0,
        },
        "reconnects": session.reconnect_count,
        "tool_calls": {
            "total": len(tool_records),
            "by_status": dict(sorted(tool_status.items())),
            "replayed": sum(1 for call in tool_records if call.get("replayed")),
        },
        "budget_breaches": {
            "total": sum(breaches_by_stage.values()),
            "turns_with_breach": sum(1 for t in turns if t.breaches),
            "by_stage": {stage: breaches_by_stage[stage] for stage in STAGE_KEYS if breaches_by_stage[stage]},
        },
        "errors": sum(1 for t in turns if t.error),
    }


# --- extractive summary --------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just let me
    more most my no nor not now of off on once only or other our ours out over own please same
    she should so some such than thank thanks that the their theirs them then there these they
    this those through to too under until up very was we were what when where which while who
    whom why will with would yes you your yours hello hi okay ok sure well um uh like""".split()
)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def _content_words(sentence: str) -> list[str]:
    return [w for w in _WORD.findall(sentence.lower()) if w not in _STOPWORDS and len(w) > 1]


def transcript_lines(turns: list[Turn]) -> list[tuple[str, str]]:
    """(speaker, text) in call order; the agent's side is what the caller heard."""
    lines: list[tuple[str, str]] = []
    for turn in turns:
        if turn.user_text.strip():
            lines.append(("Caller", turn.user_text.strip()))
        agent_text = (
            turn.heard_text.strip() if turn.interrupted else (turn.heard_text.strip() or turn.generated_text.strip())
        )
        if agent_text:
            lines.append(("Agent", agent_text))
    return lines


def extractive_summary(lines: list[tuple[str, str]], *, max_sentences: int = SUMMARY_MAX_SENTENCES) -> list[str]:
    """Pick the most informative sentences (Luhn-style word-frequency scoring).

    Sentences keep their speaker and their order in the call. The caller's first
    substantive sentence gets a bonus: it usually states why they called.
    """
    candidates: list[tuple[int, str, str, list[str]]] = []
    for speaker, text in lines:
        for sentence in _sentences(text):
            words = _content_words(sentence)
            if words:
                candidates.append((len(candidates), speaker, sentence, words))
    if not candidates:
        return []
    frequency = Counter(word for *_, words in candidates for word in set(words))
    first_caller = next((pos for pos, speaker, _, _ in candidates if speaker == "Caller"), None)
    scored = []
    for pos, speaker, sentence, words in candidates:
        score = sum(frequency[w] for w in words) / math.sqrt(len(words))
        if pos == first_caller:
            score *= 1.5
        scored.append((score, -pos, pos, speaker, sentence))
    chosen = sorted(scored, reverse=True)[:max_sentences]
    result = []
    for _, _, _, speaker, sentence in sorted(chosen, key=lambda item: item[2]):
        if len(sentence) > SUMMARY_SENTENCE_CHARS:
            sentence = sentence[: SUMMARY_SENTENCE_CHARS - 1].rstrip() + "…"
        result.append(f"{speaker}: {sentence}")
    return result


# --- building and storing ----------------------------------------------------------------------


def report_build(*, session: VoiceSession) -> dict[str, Any]:
    """The report of a finished session, from its stored turns (no side effects)."""
    turns = list(Turn.objects.filter(session=session).order_by("index"))
    summary = extractive_summary(transcript_lines(turns))
    duration = None
    if session.started_at and session.ended_at:
        duration = round((session.ended_at - session.started_at).total_seconds(), 1)
    return {
        "version": REPORT_VERSION,
        "generated_at": timezone.now().isoformat(),
        "session_id": str(session.id),
        "agent": session.agent.slug,
        "prompt_version": session.prompt_version.number,
        "state": session.state,
        "end_reason": session.end_reason,
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "duration_s": duration,
        "kpis": report_kpis(session=session, turns=turns),
        "summary": " ".join(summary),
        "summary_sentences": summary,
        "staff_actions": staff_actions(session=session),
    }


# What support staff did in the call (docs/supervisor.md): who, what, when.
STAFF_ACTION_EVENTS = {"staff.listening": "listened", "staff.whisper": "whispered"}


def staff_actions(*, session: VoiceSession) -> list[dict[str, Any]]:
    rows = SessionEvent.objects.filter(session=session, type__in=STAFF_ACTION_EVENTS).order_by("seq")
    return [
        {
            "user": str(row.payload.get("user", "")),
            "action": STAFF_ACTION_EVENTS[row.type],
            "at": row.created_at.isoformat(),
        }
        for row in rows
    ]


@transaction.atomic
def session_report_create(*, session_id: UUID | str) -> tuple[VoiceSession, bool]:
    """Build and store the post-call report once. Returns (session, created).

    Idempotent: a redelivered task finds the stored report and changes nothing.
    """
    from sessions_app.services import session_event_append

    session = VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)
    if session.state not in FINAL_STATES:
        raise ReportNotReady(f"session {session.id} is {session.state}")
    if session.report is not None:
        return session, False
    session.report = report_build(session=session)
    fields = ["report", "updated_at"]
    if session.report_delivery_id is None:
        session.report_delivery_id = uuid.uuid4()
        fields.append("report_delivery_id")
    session.save(update_fields=fields)
    kpis = session.report["kpis"]
    session_event_append(
        session_id=session.id,
        type="session.report_ready",
        payload={
            "turns": kpis["turns"],
            "e2e_p95_ms": kpis["e2e_ms"]["p95"],
            "ttfa_p95_ms": kpis["ttfa_ms"]["p95"],
            "budget_breaches": kpis["budget_breaches"]["total"],
            "summary": session.report["summary"][:500],
        },
    )
    logger.info("post-call report stored (%d turns)", kpis["turns"])
    return session, True


# --- webhook delivery --------------------------------------------------------------------------


def report_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """`t=<ts>,v1=<hex hmac-sha256 of "<ts>." + body>` (voiceplatform/signing.py)."""
    return signing.signature(secret=secret, timestamp=timestamp, payload=body)


def report_signature_verify(
    *, secret: str, header: str, body: bytes, tolerance_s: int = signing.TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """What a receiver does (also used by our tests): check the HMAC and the timestamp age."""
    return signing.signature_verify(secret=secret, header=header, payload=body, tolerance_s=tolerance_s, now=now)


def report_webhook_body(*, session: VoiceSession) -> bytes:
    """The same bytes on every attempt: built only from stored, immutable data."""
    payload = {
        "type": WEBHOOK_EVENT,
        "delivery_id": str(session.report_delivery_id),
        "session": {
            "id": str(session.id),
            "caller_id": session.caller_id,
            "room": session.room_name,
            "agent": session.agent.slug,
            "state": session.state,
            "end_reason": session.end_reason,
            "metadata": session.metadata,
        },
        "report": session.report,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass
class DeliveryOutcome:
    status: str  # "delivered" | "already_delivered" | "no_webhook" | "busy" | "retry" | "failed"
    detail: str = ""
    http_status: int | None = None
    retry_in_s: float | None = None  # "busy": when the other attempt's lease lapses


def session_report_delivery_claim(*, session_id: UUID | str, holder: str) -> tuple[str, float]:
    """Take the send lease of a session's report webhook: ("claimed", 0), ("delivered", 0),
    or ("busy", seconds until the other holder's lease lapses).

    One conditional UPDATE: it succeeds only while the report is undelivered and the lease
    is free, lapsed, or already this holder's (the same message redelivered after its worker
    died: its earlier run is gone). So two attempts never send at once, and no attempt
    sends after a success was recorded.
    """
    now = timezone.now()
    claimed = (
        VoiceSession.objects.filter(pk=session_id, report_delivered_at__isnull=True)
        .filter(
            Q(report_delivery_lease_until__isnull=True)
            | Q(report_delivery_lease_until__lte=now)
            | Q(report_delivery_holder=holder)
        )
        .update(report_delivery_holder=holder, report_delivery_lease_until=now + timedelta(seconds=DELIVERY_LEASE_S))
    )
    if claimed:
        return "claimed", 0.0
    row = VoiceSession.objects.filter(pk=session_id).values("report_delivered_at", "report_delivery_lease_until").get()
    if row["report_delivered_at"] is not None:
        return "delivered", 0.0
    lease_until = row["report_delivery_lease_until"] or now
    return "busy", max(0.0, (lease_until - now).total_seconds())


def session_report_delivery_release(*, session_id: UUID | str, holder: str) -> None:
    """Give the lease back after a failed attempt, so the next one need not wait for it."""
    VoiceSession.objects.filter(pk=session_id, report_delivery_holder=holder).update(
        report_delivery_holder="", report_delivery_lease_until=None
    )


async def _post_report(url: str, *, body: bytes, headers: dict[str, str]) -> int:
    """POST through voiceplatform.outbound: no internal address unless admitted, and no
    redirects (a redirect would re-send the signed report to a URL nobody configured)."""
    async with outbound.client_session(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)) as http:
        async with http.post(url, data=body, headers=headers, allow_redirects=False) as response:
            await outbound.read_capped(response, limit=64 * 1024)
            return response.status


def session_report_deliver(*, session_id: UUID | str, attempt: int = 1, holder: str | None = None) -> DeliveryOutcome:
    """POST the stored report to the client's webhook once; the caller retries on "retry"
    and, after `retry_in_s`, on "busy" (another attempt holds the send lease).

    `holder` names this attempt (the Celery task id and retry number: a redelivered
    message is the same holder). No DB transaction is held during the HTTP call: the send
    lease keeps a second attempt from sending meanwhile, and success is recorded with a
    conditional update.
    """
    holder = holder or f"direct-{uuid.uuid4()}"
    session = VoiceSession.objects.select_related("agent", "api_client").get(pk=session_id)
    client = session.api_client
    if session.report_delivered_at is not None:
        return DeliveryOutcome("already_delivered")
    if client is None or not client.webhook_url or session.report is None:
        return DeliveryOutcome("no_webhook")
    if not client.webhook_secret:
        return DeliveryOutcome(
            "failed", "the API client has a webhook URL but no webhook secret; refusing to send unsigned"
        )
    claim, wait_s = session_report_delivery_claim(session_id=session.id, holder=holder)
    if claim == "delivered":
        return DeliveryOutcome("already_delivered")
    if claim == "busy":
        return DeliveryOutcome("busy", "another attempt is sending", retry_in_s=wait_s)
    body = report_webhook_body(session=session)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "voiceplatform-webhooks/1",
        EVENT_HEADER: WEBHOOK_EVENT,
        DELIVERY_HEADER: str(session.report_delivery_id),
        "X-Voice-Attempt": str(attempt),
        SIGNATURE_HEADER: report_signature(secret=client.webhook_secret, timestamp=int(time.time()), body=body),
    }
    try:
        status = async_to_sync(_post_report)(client.webhook_url, body=body, headers=headers)
    except (aiohttp.ClientError, TimeoutError, OSError, outbound.ResponseTooLarge) as exc:
        session_report_delivery_release(session_id=session.id, holder=holder)
        refused = outbound.refusal(exc)
        if refused is not None:  # retrying cannot help: the address is not allowed
            return DeliveryOutcome("failed", f"the webhook URL is refused: {refused}")
        logger.warning("report webhook attempt %d failed: %s", attempt, exc)
        return DeliveryOutcome("retry", f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        session_report_mark_delivered(session_id=session.id, attempt=attempt, http_status=status)
        return DeliveryOutcome("delivered", http_status=status)
    session_report_delivery_release(session_id=session.id, holder=holder)
    logger.warning("report webhook attempt %d got HTTP %d", attempt, status)
    return DeliveryOutcome("retry", f"HTTP {status}", http_status=status)


@transaction.atomic
def session_report_mark_delivered(*, session_id: UUID | str, attempt: int, http_status: int) -> bool:
    from sessions_app.services import session_event_append

    updated = VoiceSession.objects.filter(pk=session_id, report_delivered_at__isnull=True).update(
        report_delivered_at=timezone.now(), report_delivery_holder="", report_delivery_lease_until=None
    )
    if updated:
        session_event_append(
            session_id=session_id, type="report.delivered", payload={"attempts": attempt, "http_status": http_status}
        )
        logger.info("report webhook delivered after %d attempt(s)", attempt)
    return bool(updated)


@transaction.atomic
def session_report_delivery_failed(*, session_id: UUID | str, attempts: int, detail: str) -> None:
    from sessions_app.services import session_event_append

    session_event_append(
        session_id=session_id, type="report.delivery_failed", payload={"attempts": attempts, "detail": detail[:300]}
    )
    logger.error("report webhook gave up after %d attempt(s): %s", attempts, detail)
