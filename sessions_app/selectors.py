"""Reads for voice sessions, scoped to their owner (an API client or a browser user)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import QuerySet

from agents_app.models import STAGE_KEYS, Agent, PromptStatus
from sessions_app.live.messages import turn_as_dict
from sessions_app.models import ApiClient, LiveKitWebhookEvent, SessionEvent, Turn, VoiceSession, caller_key
from sessions_app.schemas import SessionSummaryOut


def sessions_owned(*, api_client: ApiClient | None = None, user: Any = None) -> QuerySet[VoiceSession]:
    """Sessions an owner may see: an API client its own, a browser user the calls they started.

    Exactly one owner must be given; anything else sees nothing (never everything).
    """
    qs = VoiceSession.objects.select_related("agent", "prompt_version")
    if api_client is not None and user is None:
        return qs.filter(api_client=api_client)
    if user is not None and api_client is None and getattr(user, "pk", None) is not None:
        return qs.filter(user=user, api_client__isnull=True)
    return qs.none()


def session_owned_get(
    *, session_id: UUID, api_client: ApiClient | None = None, user: Any = None
) -> VoiceSession | None:
    return sessions_owned(api_client=api_client, user=user).filter(pk=session_id).first()


def session_list(
    *,
    api_client: ApiClient | None = None,
    user: Any = None,
    state: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[VoiceSession], int]:
    qs = sessions_owned(api_client=api_client, user=user)
    if state:
        qs = qs.filter(state=state)
    total = qs.count()
    return list(qs.order_by("-created_at", "-pk")[offset : offset + limit]), total


def session_turns(*, session_id: UUID | str) -> list[dict[str, Any]]:
    """Every turn of a session, in order (`live.messages.turn_as_dict`)."""
    return [turn_as_dict(t) for t in Turn.objects.filter(session_id=session_id).order_by("index")]


def _stage_averages(turns: list[dict[str, Any]]) -> dict[str, float | None]:
    averages: dict[str, float | None] = {}
    for stage in STAGE_KEYS:
        values = [v for v in (t["stages_ms"].get(stage) for t in turns) if v is not None]
        averages[stage] = round(sum(values) / len(values), 3) if values else None
    return averages


def session_detail(session: VoiceSession) -> dict[str, Any]:
    """The client API's session: its summary (`SessionSummaryOut`, read from the row),
    metadata, the mean of each stage, and every turn (texts, stages, breaches, tools)."""
    turns = session_turns(session_id=session.pk)
    return {
        **SessionSummaryOut.from_orm(session).model_dump(),
        "metadata": session.metadata or {},
        "stage_avg_ms": _stage_averages(turns),
        "turns": turns,
    }


def turn_heard(turn: Turn) -> dict[str, Any]:
    """A turn's heard gap next to the platform's own figure (`HeardOut`)."""
    return {
        "session_id": turn.session_id,
        "index": turn.index,
        "heard_gap_ms": turn.heard_gap_ms,
        "barge_in_ms": turn.heard_barge_in_ms,
        "platform_gap_ms": turn.platform_gap_ms(),
        "difference_ms": turn.heard_difference_ms,
        "tolerance_ms": float(settings.HEARD_GAP_TOLERANCE_MS),
        "mismatch": turn.heard_mismatch,
    }


def agents_callable() -> QuerySet[Agent]:
    """Active agents with a published prompt: the ones a call can be started with."""
    return Agent.objects.filter(active=True, prompt_versions__status=PromptStatus.PUBLISHED).distinct().order_by("name")


def session_for_agent_key(*, session_id: str, api_client: Any) -> VoiceSession | None:
    """The session, if it belongs to an agent this agent-scope key serves (else None)."""
    return (
        VoiceSession.objects.filter(pk=session_id, agent__agent_keys=api_client)
        .only("id", "state", "agent_id", "caller_id", "caller_number", "api_client_id", "user_id")
        .first()
    )


def tool_call_identity(*, session_id: Any) -> dict[str, str] | None:
    """Who a tool call is for, as the platform knows it: the session, the caller (namespaced
    by the client or browser user that opened it) and the agent. None without a session."""
    if not session_id:
        return None
    row = (
        VoiceSession.objects.filter(pk=session_id)
        .values("api_client_id", "user_id", "caller_id", "caller_number", "agent__slug")
        .first()
    )
    if row is None:
        return None
    caller = caller_key(
        api_client_id=row["api_client_id"],
        user_id=row["user_id"],
        caller_id=row["caller_id"],
        caller_number=row["caller_number"],
    )
    return {"session": str(session_id), "caller": caller, "agent": row["agent__slug"]}


def session_transfer_target(*, session_id: Any) -> str | None:
    """Where `transfer_call` sends this session's caller: its phone line's `transfer_to`
    ("" when the line has none), None when the session is not a phone call."""
    row = VoiceSession.objects.filter(pk=session_id, channel="phone").values("phone_line__transfer_to").first()
    if row is None:
        return None
    return row["phone_line__transfer_to"] or ""


def session_transfer_requested(*, session_id: Any) -> bool:
    """`transfer_call` has asked for this caller's transfer and it has not failed (more
    `call.transfer` events than `call.transfer_failed` ones)."""
    types = list(
        SessionEvent.objects.filter(
            session_id=session_id, type__in=("call.transfer", "call.transfer_failed")
        ).values_list("type", flat=True)
    )
    return types.count("call.transfer") > types.count("call.transfer_failed")


def webhook_latest_received() -> datetime | None:
    """When the last LiveKit webhook arrived (`manage.py doctor`), None if none ever did."""
    return LiveKitWebhookEvent.objects.order_by("-received_at").values_list("received_at", flat=True).first()


def webhook_received_for_room(room: str) -> list[str]:
    """The events LiveKit delivered for one room, in arrival order."""
    return list(
        LiveKitWebhookEvent.objects.filter(room_name=room).order_by("received_at").values_list("event", flat=True)
    )


def sessions_opened_since(moment: datetime) -> bool:
    return VoiceSession.objects.filter(created_at__gt=moment).exists()
