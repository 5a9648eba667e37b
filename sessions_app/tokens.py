"""Short-lived LiveKit access tokens for callers.

livekit-api's `AccessToken` defaults are loose (6 h, every in-room permission), so every
grant is set explicitly here: one room, join, microphone only, subscribe, data. Admin,
create, list and record are spelled out as False so a reader of the JWT sees them denied.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from livekit.api import AccessToken, VideoGrants

# Hard ceiling whatever the settings say: a leaked token must not outlive a short call setup.
MAX_TTL_SECONDS = 900
CALLER_IDENTITY_PREFIX = "caller-"
AGENT_IDENTITY_PREFIX = "agent-"
PUBLISH_SOURCES = ["microphone"]


@dataclass(frozen=True)
class MintedToken:
    token: str
    identity: str
    room: str
    expires_at: dt.datetime


def caller_identity(caller_id: str) -> str:
    """The participant identity bound to the caller; agents use the `agent-` prefix."""
    return f"{CALLER_IDENTITY_PREFIX}{caller_id}"


def session_caller_identity(*, caller_id: str, caller_participant: str = "") -> str:
    """The room participant who is a session's caller: the identity the platform minted a
    token for, or, for a phone call, the SIP participant's identity."""
    return caller_participant or caller_identity(caller_id)


def caller_grants(*, room: str) -> VideoGrants:
    return VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_publish_sources=list(PUBLISH_SOURCES),
        can_subscribe=True,
        can_publish_data=True,
        can_update_own_metadata=False,
        room_admin=False,
        room_create=False,
        room_list=False,
        room_record=False,
    )


def token_ttl_seconds() -> int:
    return max(1, min(int(settings.LIVEKIT_TOKEN_TTL_SECONDS), MAX_TTL_SECONDS))


def caller_token_mint(*, room: str, caller_id: str, name: str = "") -> MintedToken:
    """A JWT that lets exactly this caller join exactly this room for a few minutes."""
    return _mint(
        identity=caller_identity(caller_id),
        name=name or caller_id,
        grants=caller_grants(room=room),
        ttl=token_ttl_seconds(),
    )


def _mint(*, identity: str, name: str, grants: VideoGrants, ttl: int) -> MintedToken:
    """A standard participant's JWT with exactly `grants`, valid for `ttl` seconds."""
    # AccessToken computes exp from "now" in whole seconds; report the same instant.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    token = (
        AccessToken(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET)
        .with_identity(identity)
        .with_name(name)
        .with_kind("standard")
        .with_grants(grants)
        .with_ttl(dt.timedelta(seconds=ttl))
        .to_jwt()
    )
    return MintedToken(token=token, identity=identity, room=grants.room, expires_at=now + dt.timedelta(seconds=ttl))


STAFF_IDENTITY_PREFIX = "staff-"
# A listener's token lasts long enough to join and listen to a call's next minutes; the
# dashboard asks for a new one to listen again.
STAFF_LISTEN_TTL_SECONDS = 300


def staff_listen_grants(*, room: str) -> VideoGrants:
    """Listen in: subscribe only, and hidden (the caller and the agent do not see a listener
    join, livekit-agents' room I/O never links to it)."""
    return VideoGrants(
        room_join=True,
        room=room,
        can_publish=False,
        can_publish_sources=[],
        can_subscribe=True,
        can_publish_data=False,
        can_update_own_metadata=False,
        hidden=True,
        room_admin=False,
        room_create=False,
        room_list=False,
        room_record=False,
    )


def staff_listen_token_mint(*, room: str, username: str) -> MintedToken:
    """A JWT for one support person to listen to one room, hidden, for a few minutes."""
    import secrets

    return _mint(
        identity=f"{STAFF_IDENTITY_PREFIX}{username[:60]}-{secrets.token_hex(3)}",
        name=f"{username} (listening)",
        grants=staff_listen_grants(room=room),
        ttl=min(STAFF_LISTEN_TTL_SECONDS, MAX_TTL_SECONDS),
    )


def client_url() -> str:
    """Where the caller connects: the LiveKit server, or the local agent host (local mode)."""
    if settings.LIVEKIT_URL:
        return settings.LIVEKIT_URL
    return f"local://{settings.LOCAL_AGENT_HOST}:{settings.LOCAL_AGENT_PORT}"
