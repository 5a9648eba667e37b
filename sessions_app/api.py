"""The client API: voice sessions, tokens, reconnect, interrupt, end, LiveKit webhooks.

Three audiences, three auth schemes:
- apps: `Authorization: Bearer <key>` (client scope), under /sessions (a caller reports what
  it heard of each turn with the same key: PUT /sessions/{id}/turns/{index}/heard);
- the browser call page: the Django login + CSRF, under /browser (no key in a browser);
- LiveKit: a signed webhook, under /livekit/webhook.
Operations stay thin: authorize, call a service or selector, return a schema.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from django.http import HttpRequest
from ninja import Field as NinjaField
from ninja import Path, Query, Router, Schema

from sessions_app import selectors, services, turns
from sessions_app.auth import browser_auth, client_key_auth
from sessions_app.models import ApiClient, VoiceSession
from sessions_app.ratelimit import action_rate_enforce
from sessions_app.schemas import (
    AgentOut,
    BrowserSessionCreateIn,
    CallPlaceIn,
    ErrorOut,
    HeardIn,
    HeardOut,
    InterruptOut,
    ReconnectOut,
    SessionCreateIn,
    SessionDetailOut,
    SessionListOut,
    SessionSummaryOut,
    SessionTokenOut,
    WebhookAckOut,
)
from sessions_app.tokens import MintedToken, client_url
from sessions_app.webhooks import webhook_receive
from voiceplatform.api_errors import ApiError

router = Router()

AUTH_ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut, 422: ErrorOut}
OBJECT_ERRORS: dict[int, Any] = {**AUTH_ERRORS, 404: ErrorOut}
# A turn index in a path: within what Turn.index (a PostgreSQL integer) can hold.
TurnIndex = Path(..., ge=0, le=2_147_483_647)
StateFilter = Literal["created", "active", "reconnecting", "ended", "failed"]


class ListQuery(Schema):
    state: StateFilter | None = NinjaField(None, description="Only sessions in this state.")
    limit: int = NinjaField(20, ge=1, le=100)
    offset: int = NinjaField(0, ge=0, le=1_000_000)


# --- helpers shared by the API-key and browser operations ------------------------------


def _owner(request: HttpRequest) -> dict[str, Any]:
    auth = request.auth  # type: ignore[attr-defined]
    if isinstance(auth, ApiClient):
        return {"api_client": auth}
    return {"user": auth}


def _owned(request: HttpRequest, session_id: UUID) -> VoiceSession:
    """The caller's own session, else 404 (never 403: other ids must not be confirmed)."""
    session = selectors.session_owned_get(session_id=session_id, **_owner(request))
    if session is None:
        raise ApiError(404, "not_found", "No such session.", {"session_id": str(session_id)})
    return session


def _rate_limit(request: HttpRequest, action: str = "session_create") -> None:
    """Per API client or browser user and action (sessions_app/ratelimit.py)."""
    owner = _owner(request)
    client = owner.get("api_client")
    subject = f"client:{client.key_prefix}" if client is not None else f"user:{owner['user'].pk}"
    action_rate_enforce(action=action, subject=subject, what=f"{action.replace('_', ' ')} requests")


def _token_out(session: VoiceSession, token: MintedToken) -> dict[str, Any]:
    return {
        "session_id": session.id,
        "room": session.room_name,
        "url": client_url(),
        "token": token.token,
        "expires_at": token.expires_at,
    }


def _create(request: HttpRequest, *, agent: str, caller_id: str, metadata: dict[str, Any]) -> tuple[int, dict]:
    owner = _owner(request)
    _rate_limit(request)
    session, token = services.session_create(agent_slug=agent, caller_id=caller_id, metadata=metadata, **owner)
    return 201, _token_out(session, token)


def _reconnect(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    _rate_limit(request, "session_reconnect")
    session, token = services.session_reconnect(session_id=_owned(request, session_id).pk)
    return {**_token_out(session, token), "reconnect_count": session.reconnect_count, "state": session.state}


def _interrupt(request: HttpRequest, session_id: UUID) -> tuple[int, dict]:
    _rate_limit(request, "session_interrupt")
    session = _owned(request, session_id)
    event = services.session_interrupt(session_id=session.pk)
    return 202, {"session_id": session.pk, "event_seq": event.seq, "state": session.state}


def _end(request: HttpRequest, session_id: UUID) -> VoiceSession:
    _rate_limit(request, "session_end")
    return services.session_end(session_id=_owned(request, session_id).pk, reason="client_request")


def _heard(request: HttpRequest, session_id: UUID, index: int, payload: HeardIn) -> dict[str, Any]:
    session = _owned(request, session_id)
    turn = turns.turn_heard_record(
        session_id=session.pk, index=index, heard_gap_ms=payload.heard_gap_ms, barge_in_ms=payload.barge_in_ms
    )
    return selectors.turn_heard(turn)


# --- apps (API key) ------------------------------------------------------------------------


@router.post(
    "/sessions",
    auth=client_key_auth,
    response={201: SessionTokenOut, 429: ErrorOut, 502: ErrorOut, **AUTH_ERRORS},
    tags=["sessions"],
    summary="Open a voice session and get a LiveKit token",
)
def create_session(request: HttpRequest, payload: SessionCreateIn) -> tuple[int, dict]:
    return _create(request, agent=payload.agent, caller_id=payload.user_id, metadata=payload.metadata)


@router.post(
    "/calls",
    auth=client_key_auth,
    response={201: SessionSummaryOut, 409: ErrorOut, 429: ErrorOut, 502: ErrorOut, **AUTH_ERRORS},
    tags=["sessions"],
    summary="Have an agent call a phone number",
)
def place_call(request: HttpRequest, payload: CallPlaceIn) -> tuple[int, Any]:
    """The line's agent calls `to` through the line's outbound SIP trunk. The answer is a
    session (channel phone, direction outbound, state created); follow it with GET
    /sessions/{id}: `active` once the callee answers, or `failed` with the outcome
    (callee_busy, callee_no_answer, callee_declined, call_failed) as its end reason."""
    _rate_limit(request, "call_place")
    session = services.phone_call_place(
        api_client=request.auth,  # type: ignore[attr-defined]
        line_number=payload.line,
        to=payload.to,
        metadata=payload.metadata,
    )
    return 201, session


@router.get("/sessions", auth=client_key_auth, response={200: SessionListOut, **AUTH_ERRORS}, tags=["sessions"])
def list_sessions(request: HttpRequest, filters: Query[ListQuery]) -> dict[str, Any]:
    items, total = selectors.session_list(
        state=filters.state, limit=filters.limit, offset=filters.offset, **_owner(request)
    )
    return {
        "items": items,
        "count": total,
        "limit": filters.limit,
        "offset": filters.offset,
    }


@router.get(
    "/sessions/{session_id}", auth=client_key_auth, response={200: SessionDetailOut, **OBJECT_ERRORS}, tags=["sessions"]
)
def get_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return selectors.session_detail(_owned(request, session_id))


@router.post(
    "/sessions/{session_id}/reconnect",
    auth=client_key_auth,
    response={200: ReconnectOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["sessions"],
    summary="A fresh token for the same room",
)
def reconnect_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return _reconnect(request, session_id)


@router.post(
    "/sessions/{session_id}/interrupt",
    auth=client_key_auth,
    response={202: InterruptOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["sessions"],
    summary="Ask the agent to stop speaking",
)
def interrupt_session(request: HttpRequest, session_id: UUID) -> tuple[int, dict]:
    return _interrupt(request, session_id)


@router.post(
    "/sessions/{session_id}/end",
    auth=client_key_auth,
    response={200: SessionSummaryOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["sessions"],
)
def end_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return _end(request, session_id)


@router.put(
    "/sessions/{session_id}/turns/{index}/heard",
    auth=client_key_auth,
    response={200: HeardOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["sessions"],
    summary="Report what the caller heard of a turn (idempotent per turn)",
)
def report_heard(request: HttpRequest, session_id: UUID, payload: HeardIn, index: int = TurnIndex) -> dict[str, Any]:
    return _heard(request, session_id, index, payload)


# --- the browser call page (Django login + CSRF) ---------------------------------------------


@router.get("/browser/agents", auth=browser_auth, response={200: list[AgentOut], **AUTH_ERRORS}, tags=["browser"])
def browser_agents(request: HttpRequest) -> list[Any]:
    return list(selectors.agents_callable())


@router.post(
    "/browser/sessions",
    auth=browser_auth,
    response={201: SessionTokenOut, 429: ErrorOut, 502: ErrorOut, **AUTH_ERRORS},
    tags=["browser"],
)
def browser_create_session(request: HttpRequest, payload: BrowserSessionCreateIn) -> tuple[int, dict]:
    return _create(request, agent=payload.agent, caller_id=f"user-{request.auth.pk}", metadata=payload.metadata)  # type: ignore[attr-defined]


@router.get(
    "/browser/sessions/{session_id}",
    auth=browser_auth,
    response={200: SessionDetailOut, **OBJECT_ERRORS},
    tags=["browser"],
)
def browser_get_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return selectors.session_detail(_owned(request, session_id))


@router.post(
    "/browser/sessions/{session_id}/reconnect",
    auth=browser_auth,
    response={200: ReconnectOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["browser"],
)
def browser_reconnect_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return _reconnect(request, session_id)


@router.post(
    "/browser/sessions/{session_id}/interrupt",
    auth=browser_auth,
    response={202: InterruptOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["browser"],
)
def browser_interrupt_session(request: HttpRequest, session_id: UUID) -> tuple[int, dict]:
    return _interrupt(request, session_id)


@router.post(
    "/browser/sessions/{session_id}/end",
    auth=browser_auth,
    response={200: SessionSummaryOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["browser"],
)
def browser_end_session(request: HttpRequest, session_id: UUID) -> dict[str, Any]:
    return _end(request, session_id)


@router.put(
    "/browser/sessions/{session_id}/turns/{index}/heard",
    auth=browser_auth,
    response={200: HeardOut, 409: ErrorOut, **OBJECT_ERRORS},
    tags=["browser"],
)
def browser_report_heard(
    request: HttpRequest, session_id: UUID, payload: HeardIn, index: int = TurnIndex
) -> dict[str, Any]:
    return _heard(request, session_id, index, payload)


# --- LiveKit -----------------------------------------------------------------------------------


@router.post(
    "/livekit/webhook",
    auth=None,
    response={200: WebhookAckOut, 400: ErrorOut, 401: ErrorOut},
    tags=["livekit"],
    summary="LiveKit webhook receiver (signed by the LiveKit server)",
)
def livekit_webhook(request: HttpRequest) -> dict[str, Any]:
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_webhook", "The webhook body is not UTF-8.") from exc
    _, created = webhook_receive(body=body, authorization=request.headers.get("Authorization", ""))
    return {"received": True, "duplicate": not created}
