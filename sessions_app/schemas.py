"""Typed request and response bodies of the client API (explicit fields, `XIn`/`XOut`)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from ninja import Field, Schema
from pydantic import ConfigDict

SLUG_PATTERN = r"^[-a-zA-Z0-9_]+$"
# The caller id becomes part of the LiveKit identity (`caller-<id>`): keep it printable.
CALLER_ID_PATTERN = r"^[A-Za-z0-9_.:@+\-]+$"


class ErrorOut(Schema):
    code: str
    message: str
    details: Any = None


class SessionCreateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(
        ..., min_length=1, max_length=64, pattern=SLUG_PATTERN, description="The agent's slug.", examples=["support"]
    )
    user_id: str = Field(
        ...,
        min_length=1,
        max_length=128,
        pattern=CALLER_ID_PATTERN,
        description="Your id for the caller; the LiveKit identity becomes `caller-<user_id>`.",
        examples=["customer-1042"],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Free JSON object stored with the session (at most SESSION_METADATA_MAX_BYTES of JSON).",
        examples=[{"plan": "gold", "locale": "en-US"}],
    )


class BrowserSessionCreateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(..., min_length=1, max_length=64, pattern=SLUG_PATTERN, examples=["support"])
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionTokenOut(Schema):
    session_id: UUID
    room: str
    url: str = Field(..., description="LIVEKIT_URL, or local://host:port for the local agent host.")
    token: str = Field(..., description="LiveKit AccessToken (JWT) for this room only.")
    expires_at: dt.datetime


class ReconnectOut(SessionTokenOut):
    reconnect_count: int
    state: str


class InterruptOut(Schema):
    session_id: UUID
    event_seq: int
    state: str


class TurnOut(Schema):
    index: int
    user_text: str
    generated_text: str
    heard_text: str
    interrupted: bool
    interrupt_source: str
    stages_ms: dict[str, float | None]
    breaches: list[str]
    heard_gap_ms: float | None = Field(None, description="Reported by the caller (PUT …/turns/{index}/heard).")
    heard_barge_in_ms: float | None = None
    heard_difference_ms: float | None = Field(None, description="heard_gap_ms minus the platform's e2e (else ttfa).")
    heard_mismatch: bool = Field(False, description="The difference is beyond HEARD_GAP_TOLERANCE_MS.")
    tool_calls: list[dict[str, Any]]
    error: str
    started_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class HeardIn(Schema):
    """What the caller measured of one of its turns, on its own monotonic clock."""

    model_config = ConfigDict(extra="forbid")

    heard_gap_ms: float = Field(
        ...,
        ge=0,
        le=600_000,
        allow_inf_nan=False,
        description="The last sample of the caller's speech it sent → the first agent audio above its energy"
        " threshold it received.",
        examples=[1180.0],
    )
    barge_in_ms: float | None = Field(
        None,
        ge=0,
        le=600_000,
        allow_inf_nan=False,
        description="When this utterance talked over the agent: its first speech sample → the agent's audio stopped.",
    )


class HeardOut(Schema):
    session_id: UUID
    index: int
    heard_gap_ms: float
    barge_in_ms: float | None
    platform_gap_ms: float | None = Field(
        ..., description="The platform's e2e for the turn (ttfa when e2e is missing)."
    )
    difference_ms: float | None = Field(
        ..., description="heard_gap_ms − platform_gap_ms: playout, transport, and what the platform does not see."
    )
    tolerance_ms: float
    mismatch: bool


class SessionSummaryOut(Schema):
    # Read straight from a VoiceSession: the aliases are its attribute paths (the API's
    # only builder of a session summary; `selectors.session_detail` extends it).
    model_config = ConfigDict(populate_by_name=True)

    session_id: UUID = Field(..., alias="id")
    agent: str = Field(..., alias="agent.slug")
    prompt_version: int = Field(..., alias="prompt_version.number")
    caller_id: str
    room: str = Field(..., alias="room_name")
    channel: str = Field(..., description="webrtc (an app or the browser) or phone (LiveKit's SIP service).")
    direction: str = Field(..., description="inbound, or outbound for a call the platform placed (POST /calls).")
    state: str
    end_reason: str = Field(
        ...,
        description="Why it ended. A placed call that never connected fails with callee_busy, callee_no_answer, "
        "callee_declined or call_failed.",
    )
    agent_status: str = Field(
        ..., description="none, dispatched, joined, lost (its job ended or crashed) or unavailable (never joined)."
    )
    turn_count: int
    interrupt_count: int
    reconnect_count: int
    last_e2e_ms: float | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None


E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"


class CallPlaceIn(Schema):
    model_config = ConfigDict(extra="forbid")

    line: str = Field(
        ...,
        pattern=E164_PATTERN,
        description="The phone line to call from (its number; its agent talks, its outbound trunk dials).",
        examples=["+15550100"],
    )
    to: str = Field(
        ...,
        pattern=E164_PATTERN,
        description="The number to call, in E.164 form; it must be within this key's call destinations.",
        examples=["+15550142"],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Free JSON object stored with the session (at most SESSION_METADATA_MAX_BYTES of JSON).",
    )


class SessionDetailOut(SessionSummaryOut):
    metadata: dict[str, Any]
    stage_avg_ms: dict[str, float | None] = Field(..., description="Mean of each stage over the recorded turns.")
    turns: list[TurnOut]


class SessionListOut(Schema):
    items: list[SessionSummaryOut]
    count: int = Field(..., description="Sessions matching the filter, before paging.")
    limit: int
    offset: int


class AgentOut(Schema):
    slug: str
    name: str
    description: str


class WebhookAckOut(Schema):
    received: bool
    duplicate: bool
