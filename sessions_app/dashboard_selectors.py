"""Reads for the live support dashboard: who may watch, table rows, KPIs, session detail.

Everything here is computed from the DB, which is the source of truth: the websocket
stream only tells open pages that something changed (and may drop messages under load).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q
from django.utils import timezone

from agents_app.models import STAGES
from sessions_app.live.messages import event_as_dict, session_row, turn_as_dict
from sessions_app.models import LIVE_STATES, SessionEvent, Turn, VoiceSession
from sessions_app.selectors import session_turns
from voiceplatform.stats import nearest_rank_percentile as percentile

SUPPORT_GROUP = "Support staff"

# The windows the KPI tiles offer; anything else is refused rather than guessed.
KPI_WINDOWS: dict[str, int] = {"5m": 5 * 60, "1h": 60 * 60, "24h": 24 * 60 * 60}
DEFAULT_KPI_WINDOW = "1h"

RECENT_SESSIONS_LIMIT = 50
# A snapshot or resync never sends more than this many events in one go; a client that
# missed more reloads the page (the DB still has all of them).
EVENTS_PAGE_LIMIT = 500


def support_staff_check(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """Staff, superusers and members of the "Support staff" group may watch calls."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_staff or user.is_superuser:
        return True
    return user.groups.filter(name=SUPPORT_GROUP).exists()


def watcher_still_allowed(*, user_id: int | None, session_key: str | None) -> bool:
    """For an open dashboard socket: the user may still watch, and is still logged in."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    if not support_staff_check(user):
        return False
    if session_key is None:
        return True  # a socket authenticated some other way (tests force a user)
    return Session.objects.filter(session_key=session_key, expire_date__gt=timezone.now()).exists()


def _sessions_qs():
    return VoiceSession.objects.select_related("agent", "prompt_version")


def dashboard_rows(*, recent_limit: int = RECENT_SESSIONS_LIMIT) -> list[dict[str, Any]]:
    """Live sessions (all of them) followed by the most recent finished ones."""
    live = list(_sessions_qs().filter(state__in=LIVE_STATES).order_by("-created_at"))
    recent = list(_sessions_qs().exclude(state__in=LIVE_STATES).order_by("-created_at")[:recent_limit])
    return [session_row(s) for s in live + recent]


def dashboard_row(*, session_id: UUID | str) -> dict[str, Any] | None:
    session = _sessions_qs().filter(pk=session_id).first()
    return session_row(session) if session else None


def dashboard_rows_for(*, session_ids: Iterable[UUID | str]) -> list[dict[str, Any]]:
    """Rows of the given sessions (unknown ids are left out)."""
    return [session_row(s) for s in _sessions_qs().filter(pk__in=list(session_ids))]


def _kpi_block(turns: list[dict[str, Any]], sessions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    sessions = list(sessions)
    e2e = [t["e2e_ms"] for t in turns if t["e2e_ms"] is not None]
    ttfa = [t["ttfa_ms"] for t in turns if t["ttfa_ms"] is not None]
    n_turns = len(turns)
    n_sessions = len(sessions)
    interrupts = sum(1 for t in turns if t["interrupted"])
    breached = sum(1 for t in turns if t["breaches"])
    reconnects = sum(s["reconnect_count"] for s in sessions)
    return {
        "turns": n_turns,
        "sessions": n_sessions,
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p95_ms": percentile(e2e, 95),
        "ttfa_p50_ms": percentile(ttfa, 50),
        "ttfa_p95_ms": percentile(ttfa, 95),
        "interrupts": interrupts,
        "interrupts_per_session": round(interrupts / n_sessions, 2) if n_sessions else None,
        "reconnects": reconnects,
        "reconnects_per_session": round(reconnects / n_sessions, 2) if n_sessions else None,
        "breached_turns": breached,
        "breach_rate": round(breached / n_turns, 3) if n_turns else None,
    }


def dashboard_kpis(*, window: str = DEFAULT_KPI_WINDOW) -> dict[str, Any]:
    """KPIs over the window, overall and per agent and per (agent, prompt version).

    A session counts in the window when it was created or had a turn in it; turns count
    when they were recorded in it. Rates are per session (interrupts, reconnects) or per
    turn (budget breaches), so windows of different traffic compare.
    """
    if window not in KPI_WINDOWS:
        raise ValueError(f"window must be one of {', '.join(KPI_WINDOWS)}")
    since = timezone.now() - timedelta(seconds=KPI_WINDOWS[window])
    turns = list(
        Turn.objects.filter(created_at__gte=since).values("session_id", "e2e_ms", "ttfa_ms", "interrupted", "breaches")
    )
    session_ids = {t["session_id"] for t in turns}
    sessions = {
        s["id"]: s
        for s in VoiceSession.objects.filter(Q(created_at__gte=since) | Q(pk__in=session_ids)).values(
            "id", "reconnect_count", "agent__slug", "agent__name", "prompt_version__number"
        )
    }
    by_agent_turns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_prompt_turns: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for turn in turns:
        session = sessions.get(turn["session_id"])
        if session is None:
            continue
        by_agent_turns[session["agent__slug"]].append(turn)
        by_prompt_turns[(session["agent__slug"], session["prompt_version__number"])].append(turn)
    by_agent_sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_prompt_sessions: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    names: dict[str, str] = {}
    for session in sessions.values():
        by_agent_sessions[session["agent__slug"]].append(session)
        by_prompt_sessions[(session["agent__slug"], session["prompt_version__number"])].append(session)
        names[session["agent__slug"]] = session["agent__name"]

    return {
        "window": window,
        "window_seconds": KPI_WINDOWS[window],
        "since": since.isoformat(),
        "overall": _kpi_block(turns, sessions.values()),
        "by_agent": [
            {"agent": slug, "agent_name": names.get(slug, slug), **_kpi_block(by_agent_turns[slug], group)}
            for slug, group in sorted(by_agent_sessions.items())
        ],
        "by_prompt": [
            {
                "agent": slug,
                "agent_name": names.get(slug, slug),
                "prompt_version": number,
                **_kpi_block(by_prompt_turns[(slug, number)], group),
            }
            for (slug, number), group in sorted(by_prompt_sessions.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
        ],
    }


def session_exists(*, session_id: UUID | str) -> bool:
    return VoiceSession.objects.filter(pk=session_id).exists()


def session_events_after(
    *, session_id: UUID | str, after_seq: int, limit: int = EVENTS_PAGE_LIMIT
) -> list[dict[str, Any]]:
    """Events with seq > after_seq, oldest first: what a reconnecting client missed."""
    events = SessionEvent.objects.filter(session_id=session_id, seq__gt=after_seq).order_by("seq")[:limit]
    return [event_as_dict(e) for e in events]


def session_missed(*, session_id: UUID | str, after_seq: int) -> dict[str, Any]:
    """What a socket missed after `after_seq`: the events (one page), the turns they
    completed, the row, and whether that page was the last one (`live.messages.resync`)."""
    events = session_events_after(session_id=session_id, after_seq=after_seq)
    # Turns completed, or whose heard gap the caller reported, in that page (once each).
    indexes = list(
        dict.fromkeys(e["payload"].get("index") for e in events if e["type"] in ("turn.completed", "turn.heard"))
    )
    turns = Turn.objects.filter(session_id=session_id, index__in=[i for i in indexes if isinstance(i, int)])
    by_index = {turn.index: turn_as_dict(turn) for turn in turns}
    return {
        "events": events,
        "turns": [by_index[i] for i in indexes if isinstance(i, int) and i in by_index],
        "row": dashboard_row(session_id=session_id),
        "complete": len(events) < EVENTS_PAGE_LIMIT,
    }


def session_snapshot(*, session_id: UUID | str) -> dict[str, Any] | None:
    """Everything the session page shows (embedded in the page, and the body of its
    socket's `snapshot`): the row, budgets, turns, events, report."""
    session = _sessions_qs().filter(pk=session_id).first()
    if session is None:
        return None
    return {
        "session": session_row(session),
        "budgets_ms": session.agent.budgets_ms(),
        "stages": [{"key": key, "label": label} for key, label in STAGES],
        "turns": session_turns(session_id=session.pk),
        "events": session_events_after(session_id=session.pk, after_seq=max(0, session.last_seq - EVENTS_PAGE_LIMIT)),
        "report": session.report,
    }
