"""Writes for API clients, voice sessions and their event timeline.

Service functions are keyword-only, atomic, and broadcast after commit.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from sessions_app import broadcast
from sessions_app.live import messages as live
from sessions_app.models import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    LIVE_STATES,
    AgentStatus,
    ApiClient,
    ApiScope,
    SessionEvent,
    SessionState,
    VoiceSession,
)
from sessions_app.session_insert import insert_session_with_events
from voiceplatform.errors import Conflict, Forbidden, InvalidInput, Unavailable
from voiceplatform.hotcache import hot_get, hot_set
from voiceplatform.jsonsafe import json_problem

if TYPE_CHECKING:
    from sessions_app.tokens import MintedToken

API_KEY_PREFIX = "vp_"


class InvalidTransition(Exception):
    def __init__(self, session: VoiceSession, to_state: str) -> None:
        super().__init__(f"Session {session.id} cannot go from {session.state} to {to_state}.")
        self.from_state = session.state
        self.to_state = to_state


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_client_create(*, name: str, scope: str = ApiScope.CLIENT, webhook_url: str = "") -> tuple[ApiClient, str]:
    """Create a client and return it with its key. Only the key's hash is stored."""
    if scope not in ApiScope.values:
        raise ValueError(f"scope must be one of {', '.join(ApiScope.values)}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient.objects.create(
        name=name,
        scope=scope,
        key_prefix=key[:10],
        key_hash=hash_api_key(key),
        webhook_url=webhook_url,
        webhook_secret=secrets.token_urlsafe(32) if webhook_url else "",
    )
    return client, key


def api_client_authenticate(*, key: str) -> ApiClient | None:
    if not key or not key.startswith(API_KEY_PREFIX):
        return None
    key_hash = hash_api_key(key)
    cache_key = f"apikey:{key_hash}"
    client = hot_get(cache_key)
    if client is None:
        # Every API request starts here: a hand-written SELECT (`Manager.raw()`) skips the
        # ORM's query compiler, about a third of the CPU of `.filter().first()`.
        table = connection.ops.quote_name(ApiClient._meta.db_table)
        found = ApiClient.objects.raw(
            f"SELECT id, name, key_prefix, scope, active, last_used_at FROM {table} WHERE key_hash = %s AND active",
            [key_hash],
        )
        client = next(iter(found), None)
        if client is None:
            return None
        hot_set(cache_key, client)
    # Cheap "last used" bookkeeping, at most once a minute per client.
    now = timezone.now()
    if client.last_used_at is None or (now - client.last_used_at).total_seconds() > 60:
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
        client.last_used_at = now
        hot_set(cache_key, client)
    return client


def _publish_after_commit(session_id: UUID, *messages: dict[str, Any]) -> None:
    groups = broadcast.session_groups(session_id)
    transaction.on_commit(lambda: broadcast.publish_many(groups, list(messages)))


def _session_updated(session: VoiceSession) -> dict[str, Any]:
    return live.session_updated(live.session_row(session))


@transaction.atomic
def session_event_append(
    *,
    session_id: UUID | str,
    type: str,
    payload: dict[str, Any] | None = None,
    announce: bool = True,
    key: str | None = None,
) -> SessionEvent:
    """Append an event with the session's next sequence number (gapless, per session).

    `announce=False` leaves the `event.added` message to the caller, who sends it in one
    batch with its own (see `turn_record`). Messages are built by `sessions_app.live.messages`.
    With a `key` (the agent's writer gives one per record), appending the same key again
    returns the stored event: a retry after a lost commit answer stores nothing twice.
    Call it inside a transaction: the sequence number and the row go together.
    """
    if key:
        stored = SessionEvent.objects.filter(session_id=session_id, record_key=key).first()
        if stored is not None:
            return stored
    updated = VoiceSession.objects.filter(pk=session_id).update(last_seq=F("last_seq") + 1)
    if not updated:
        raise VoiceSession.DoesNotExist(f"no session {session_id}")
    seq = VoiceSession.objects.filter(pk=session_id).values_list("last_seq", flat=True).get()
    event = SessionEvent.objects.create(
        session_id=session_id, seq=seq, type=type, payload=payload or {}, record_key=key or ""
    )
    if announce:
        _publish_after_commit(event.session_id, live.event_added(event))
    return event


@transaction.atomic
def session_transition(
    *,
    session_id: UUID | str,
    to_state: str,
    reason: str = "",
    payload: dict[str, Any] | None = None,
) -> VoiceSession:
    """Move a session through its state machine; every transition writes an event."""
    session = VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)
    if to_state not in ALLOWED_TRANSITIONS[session.state]:
        raise InvalidTransition(session, to_state)
    from_state = session.state
    now = timezone.now()
    session.state = to_state
    fields = ["state", "updated_at"]
    if to_state == SessionState.ACTIVE and session.started_at is None:
        session.started_at = now
        fields.append("started_at")
    if to_state in (SessionState.ENDED, SessionState.FAILED):
        session.ended_at = now
        session.end_reason = reason[:200]
        fields += ["ended_at", "end_reason"]
    session.save(update_fields=fields)
    event = session_event_append(
        session_id=session.id,
        type="session.state_changed",
        payload={"from": from_state, "to": to_state, "reason": reason, **(payload or {})},
        announce=False,
    )
    session.last_seq = event.seq  # the row is locked: nobody appended in between
    _publish_after_commit(session.id, live.event_added(event), _session_updated(session))
    if to_state in (SessionState.ENDED, SessionState.FAILED):
        _on_session_finished(session.id)
    return session


def session_finish(*, session_id: UUID | str, reason: str) -> bool:
    """End a session that is still live (the room closed, the platform ended the job).

    Idempotent: returns False when the session was already final.
    """
    with transaction.atomic():
        state = VoiceSession.objects.select_for_update().filter(pk=session_id).values_list("state", flat=True).first()
        if state not in LIVE_STATES:
            return False
        session_transition(session_id=session_id, to_state=SessionState.ENDED, reason=reason)
    return True


def session_publish_updated(*, session: VoiceSession) -> None:
    _publish_after_commit(session.id, _session_updated(session))


def _on_session_finished(session_id: UUID) -> None:
    """Queue post-call work after commit (the Celery issue fills in the task)."""

    def enqueue() -> None:
        try:
            from sessions_app.tasks import session_post_call_report

            session_post_call_report.delay(str(session_id))
        except Exception:  # the reaper/backfill picks up reports that failed to enqueue
            import logging

            logging.getLogger(__name__).warning("could not enqueue post-call report", exc_info=True)

    transaction.on_commit(enqueue)


# --- client API: create, reconnect, interrupt, end (issue 5) -----------------------------
# Refusals are domain errors (voiceplatform/errors.py); the API edge maps them to HTTP.


def session_metadata_validate(metadata: dict[str, Any]) -> dict[str, Any]:
    """Reject metadata over SESSION_METADATA_MAX_BYTES or not storable as JSON (422)."""
    from django.conf import settings

    problem = json_problem(metadata)
    try:
        encoded = json.dumps(metadata, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, TypeError, RecursionError):
        problem = problem or "is not plain JSON (NaN and Infinity are not allowed)"
        encoded = b""
    if problem:
        raise InvalidInput("invalid_metadata", f"metadata {problem}.")
    limit = settings.SESSION_METADATA_MAX_BYTES
    if len(encoded) > limit:
        raise InvalidInput(
            "metadata_too_large",
            f"metadata is {len(encoded)} bytes of JSON; the limit is {limit}.",
            {"max_bytes": limit, "bytes": len(encoded)},
        )
    return metadata


def _room_name(session_id: UUID) -> str:
    return f"vs-{session_id.hex}"


def _dispatch_mode() -> str:
    from django.conf import settings

    return "local" if settings.LIVEKIT_LOCAL_MODE else "livekit"


def session_create(
    *,
    agent_slug: str,
    caller_id: str,
    metadata: dict[str, Any] | None = None,
    api_client: ApiClient | None = None,
    user: Any = None,
) -> tuple[VoiceSession, MintedToken]:
    """Open a session with the agent's published prompt pinned, dispatch the agent, mint a token.

    With a LiveKit server the agent is dispatched explicitly (AgentDispatchService, by
    agent name, job metadata {"session_id"}). If that fails the session is marked
    failed and a 502 `dispatch_failed` is raised: a client never holds a token for a
    room that no agent will join. In local mode the local agent host starts the job
    when the caller connects; the dispatch is still recorded as an event.
    """
    from django.conf import settings

    from agents_app.selectors import agent_by_slug, published_version_for_call
    from sessions_app.tokens import caller_token_mint

    metadata = session_metadata_validate(metadata or {})
    # One query on the hot path: the agent's published version with its agent.
    version = published_version_for_call(slug=agent_slug)
    if version is None:
        if agent_by_slug(slug=agent_slug) is None:
            raise InvalidInput("unknown_agent", f"No active agent with slug {agent_slug!r}.", {"agent": agent_slug})
        raise InvalidInput(
            "agent_not_published", f"Agent {agent_slug!r} has no published prompt yet.", {"agent": agent_slug}
        )
    agent = version.agent

    session_id = uuid.uuid4()
    mode = _dispatch_mode()
    first_events: list[tuple[str, dict[str, Any]]] = [
        (
            "session.created",
            {
                "agent": agent.slug,
                "prompt_version": version.number,
                "caller_id": caller_id,
                "source": "api" if api_client is not None else "browser",
            },
        )
    ]
    if mode == "local":
        first_events.append(("agent.dispatch_requested", {"mode": mode, "agent_name": settings.LIVEKIT_AGENT_NAME}))
    # The row is new and invisible until it is written, so its first events can be
    # numbered here (1..n, gapless) and written with it instead of n locked appends.
    session = VoiceSession(
        id=session_id,
        api_client=api_client,
        user=user if api_client is None else None,
        caller_id=caller_id,
        room_name=_room_name(session_id),
        agent=agent,
        prompt_version=version,
        metadata=metadata,
        last_seq=len(first_events),
    )
    events = [
        SessionEvent(session_id=session_id, seq=seq, type=kind, payload=payload)
        for seq, (kind, payload) in enumerate(first_events, start=1)
    ]
    _insert_announced(session, events)

    if mode == "livekit":
        _dispatch_or_fail(session)

    token = caller_token_mint(room=session.room_name, caller_id=caller_id)
    return session, token


def _insert_announced(session: VoiceSession, events: list[SessionEvent]) -> None:
    """Write a new session with its first events (numbered 1..n) and, after commit, show it
    on the dashboard. Only the dashboard: nobody can be watching `session.<id>` yet."""
    insert_session_with_events(session, events)
    messages = [*(live.event_added(event) for event in events), _session_updated(session)]
    transaction.on_commit(lambda: broadcast.publish_many([broadcast.DASHBOARD_GROUP], messages))


def _dispatch_or_fail(session: VoiceSession) -> None:
    """Dispatch the agent to the session's room explicitly (AgentDispatchService, job
    metadata {"session_id"}), outside any transaction: no row lock is held across a
    network call. A refusal fails the session and raises a 502 `dispatch_failed`."""
    from sessions_app import livekit_server
    from sessions_app.lifecycle import session_agent_dispatched

    try:
        dispatch_id = livekit_server.agent_dispatch_create(room=session.room_name, session_id=str(session.pk))
    except livekit_server.LiveKitServerError as exc:
        session_transition(session_id=session.pk, to_state=SessionState.FAILED, reason="dispatch_failed")
        raise Unavailable(
            "dispatch_failed",
            "The agent could not be dispatched to the room; the session was marked failed.",
            {"session_id": str(session.pk), "error": str(exc)[:300]},
        ) from exc
    session_agent_dispatched(session_id=session.pk, mode="livekit", dispatch_id=dispatch_id)


def phone_call_place(
    *, api_client: ApiClient, line_number: str, to: str, metadata: dict[str, Any] | None = None
) -> VoiceSession:
    """Have the platform call `to` from the phone line `line_number` (POST /calls).

    Refused unless `to` is within the client's allowed destinations, the line places
    calls (an outbound SIP server, applied to the server), the platform runs on a LiveKit
    server, and no call of this client to `to` is live. The session is created here
    (direction outbound, the line's agent, its published prompt pinned) and the agent is
    dispatched to the call's room; the agent's job dials through the line's outbound trunk
    (CreateSIPParticipant) and the callee answering makes the session active. Busy, no
    answer and other failures end it as `failed` with the outcome as its end reason.
    """
    from django.conf import settings

    from agents_app.models import E164_RE, PhoneLine
    from agents_app.selectors import published_version_for_call
    from sessions_app.models import CallDirection, SessionChannel, call_destination_allowed, mask_phone_number

    if not E164_RE.match(to or ""):
        raise InvalidInput("invalid_number", f"{to!r} is not a phone number in E.164 form, e.g. +15550100.", {"to": to})
    if not call_destination_allowed(list(api_client.call_destinations or []), to):
        raise Forbidden(
            "destination_not_allowed",
            "This API key may not have the platform call that number (its call destinations, in the admin).",
            {"to": mask_phone_number(to)},
        )
    metadata = session_metadata_validate(metadata or {})
    line = PhoneLine.objects.select_related("agent").filter(number=line_number).first()
    if line is None or not line.places_calls:
        raise InvalidInput(
            "line_cannot_call",
            f"No active phone line {line_number!r} with an outbound SIP server.",
            {"line": line_number},
        )
    if settings.LIVEKIT_LOCAL_MODE or not line.livekit_outbound_trunk_id:
        raise Unavailable(
            "calls_unavailable",
            "Calls are placed through LiveKit's SIP service, and this line's outbound trunk is not on it "
            "(docs/telephony.md: `manage.py phone_lines --sync`).",
            {"line": line_number, "sync_error": line.sync_error[:300]},
        )
    if VoiceSession.objects.filter(
        api_client=api_client, caller_number=to, direction=CallDirection.OUTBOUND, state__in=LIVE_STATES
    ).exists():
        raise Conflict(
            "call_in_progress", "A call of this key to that number is still live.", {"to": mask_phone_number(to)}
        )
    version = published_version_for_call(slug=line.agent.slug)
    if version is None:
        raise InvalidInput(
            "agent_not_published", f"Agent {line.agent.slug!r} has no published prompt yet.", {"agent": line.agent.slug}
        )
    session_id = uuid.uuid4()
    masked = mask_phone_number(to)
    session = VoiceSession(
        id=session_id,
        api_client=api_client,
        caller_id=masked,
        caller_number=to,
        # The SIP participant the agent's job creates for the callee.
        caller_participant=f"sip-{session_id.hex[:16]}",
        channel=SessionChannel.PHONE,
        direction=CallDirection.OUTBOUND,
        phone_line=line,
        room_name=f"{line.room_prefix}out-{session_id.hex}",
        agent=version.agent,
        prompt_version=version,
        metadata=metadata,
        last_seq=1,
    )
    created = {
        "agent": line.agent.slug,
        "prompt_version": version.number,
        "caller_id": masked,
        "source": "api",
        "direction": CallDirection.OUTBOUND,
        "phone_line": line.number,
    }
    _insert_announced(session, [SessionEvent(session_id=session_id, seq=1, type="session.created", payload=created)])
    _dispatch_or_fail(session)
    return VoiceSession.objects.get(pk=session_id)


def phone_session_open(
    *,
    line_id: int,
    room_name: str,
    caller_number: str,
    participant_identity: str,
    connection: str,
    call_id: str = "",
) -> VoiceSession:
    """A phone call reached an agent (its job found the SIP participant): the call's session.

    LiveKit's SIP service made the room (`phone-<line>-…`) and the server dispatched the
    agent by the line's dispatch rule, so the platform hears of the call from the agent's
    job (or first from the SIP participant's webhook, `phone_call_arrived`). Idempotent by
    room: a job dispatched again after a crash finds the same session.
    """
    session = _phone_session_insert(
        line_id=line_id,
        room_name=room_name,
        caller_number=caller_number,
        participant_identity=participant_identity,
        call_id=call_id,
    )
    if session.state == SessionState.CREATED:
        from sessions_app.lifecycle import session_caller_joined

        session_caller_joined(session_id=session.pk, connection=connection, joined_at_ms=None, source="phone")
        session.refresh_from_db()
    return session


def phone_call_arrived(
    *, line_id: int, room_name: str, caller_number: str, participant_identity: str, call_id: str = ""
) -> VoiceSession:
    """A phone call's SIP participant joined its room (the webhook), maybe before any agent:
    the session exists from the first ring, and the agent's join is awaited as for a
    dispatched agent (the line's dispatch rule asked for it). No agent within
    AGENT_JOIN_TIMEOUT_SECONDS is dispatched again, and after AGENT_DISPATCH_ATTEMPTS the
    call fails as `agent_unavailable` and is hung up (lifecycle.session_agent_join_check).
    Call it inside a transaction."""
    from sessions_app.lifecycle import session_agent_dispatched

    session = _phone_session_insert(
        line_id=line_id,
        room_name=room_name,
        caller_number=caller_number,
        participant_identity=participant_identity,
        call_id=call_id,
    )
    if session.agent_status == AgentStatus.NONE:
        session_agent_dispatched(session_id=session.pk, mode="livekit", reason="the phone line's dispatch rule")
    return session


def _phone_session_insert(
    *, line_id: int, room_name: str, caller_number: str, participant_identity: str, call_id: str
) -> VoiceSession:
    """The inbound phone call's session in `room_name`, created (state created) if it is not
    there yet: the line's agent, its published prompt pinned, the caller's number kept whole
    in `caller_number` and masked in `caller_id` (what support staff see)."""
    from agents_app.models import PhoneLine
    from agents_app.selectors import published_version_for_call
    from sessions_app.models import SessionChannel, mask_phone_number

    existing = VoiceSession.objects.filter(room_name=room_name).first()
    if existing is not None:
        return existing
    line = PhoneLine.objects.select_related("agent").filter(pk=line_id).first()
    if line is None or not line.active:
        raise InvalidInput("unknown_phone_line", f"No active phone line {line_id}.", {"phone_line": line_id})
    version = published_version_for_call(slug=line.agent.slug)
    if version is None:
        raise InvalidInput(
            "agent_not_published",
            f"Agent {line.agent.slug!r} (phone line {line.number}) has no published prompt or is inactive.",
            {"agent": line.agent.slug},
        )
    session_id = uuid.uuid4()
    masked = mask_phone_number(caller_number) if caller_number else "unknown"
    created = {
        "agent": line.agent.slug,
        "prompt_version": version.number,
        "caller_id": masked,
        "source": "phone",
        "phone_line": line.number,
        "sip_call_id": call_id[:128],
    }
    session = VoiceSession(
        id=session_id,
        caller_id=masked,
        caller_number=caller_number[:32],
        caller_participant=participant_identity[:128],
        channel=SessionChannel.PHONE,
        phone_line=line,
        room_name=room_name,
        agent=version.agent,
        prompt_version=version,
        last_seq=1,
    )
    try:
        with transaction.atomic():
            _insert_announced(
                session, [SessionEvent(session_id=session_id, seq=1, type="session.created", payload=created)]
            )
    except IntegrityError:
        # The job and the webhook (or two jobs of one call) raced: the first one's session stands.
        return VoiceSession.objects.get(room_name=room_name)
    return VoiceSession.objects.get(pk=session_id)


def session_reconnect_count(*, session: VoiceSession, source: str) -> None:
    """+1 reconnect on a locked session: the counter, a `session.reconnect` event and,
    after commit, `voice_reconnects_total` (POST …/reconnect and a caller's rejoin)."""
    from sessions_app.metrics import RECONNECTS

    VoiceSession.objects.filter(pk=session.pk).update(reconnect_count=F("reconnect_count") + 1)
    session.refresh_from_db(fields=["reconnect_count"])
    session_event_append(
        session_id=session.pk,
        type="session.reconnect",
        payload={"source": source, "reconnect_count": session.reconnect_count},
    )
    label = session.agent.slug
    transaction.on_commit(lambda: RECONNECTS.labels(agent=label).inc())


@transaction.atomic
def session_reconnect(*, session_id: UUID | str, source: str = "client") -> tuple[VoiceSession, MintedToken]:
    """A fresh token for the SAME room and session; counts the reconnect (409 once final)."""
    from sessions_app.tokens import caller_token_mint

    session = VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)
    if session.state in FINAL_STATES:
        raise Conflict(
            "session_final",
            f"Session {session.id} is {session.state}; start a new session instead.",
            {"state": session.state},
        )
    session_reconnect_count(session=session, source=source)
    if session.state == SessionState.ACTIVE:
        session = session_transition(
            session_id=session.pk, to_state=SessionState.RECONNECTING, reason="client_reconnect"
        )
    else:
        session.refresh_from_db(fields=["last_seq", "state"])
        session_publish_updated(session=session)
    return session, caller_token_mint(room=session.room_name, caller_id=session.caller_id)


@transaction.atomic
def session_interrupt(*, session_id: UUID | str, source: str = "client") -> SessionEvent:
    """Record a client interrupt and forward it to the agent job's control group.

    Nothing is counted here: the agent counts an interrupt when speech is actually cut.
    """
    session = _locked_live(session_id, "interrupt")
    event = session_event_append(session_id=session.pk, type="interrupt.requested", payload={"source": source})
    message = live.agent_interrupt(session.pk, source=source, event_seq=event.seq)
    group = broadcast.agent_control_group(session.pk)
    transaction.on_commit(lambda: broadcast.publish([group], message))
    return event


def session_end(*, session_id: UUID | str, reason: str = "client_request") -> VoiceSession:
    """End a live session (409 if already final), tell its agent, and close the LiveKit room."""
    from django.conf import settings

    with transaction.atomic():
        try:
            session = session_transition(session_id=session_id, to_state=SessionState.ENDED, reason=reason)
        except InvalidTransition as exc:
            raise Conflict("session_final", str(exc), {"state": exc.from_state}) from exc
        message = live.agent_end(session.pk, reason=reason)
        group = broadcast.agent_control_group(session.pk)
        transaction.on_commit(lambda: broadcast.publish([group], message))
    if not settings.LIVEKIT_LOCAL_MODE:
        from sessions_app import livekit_server

        livekit_server.room_delete_quietly(room=session.room_name)  # the session is ended either way
    return session


@transaction.atomic
def session_transfer_claim(*, session_id: UUID | str, payload: dict[str, Any]) -> bool:
    """Record a phone caller's transfer as asked for (`call.transfer`), unless one already is
    and has not failed: the session row is locked, so two transfers at once cannot both pass."""
    from sessions_app.selectors import session_transfer_requested

    VoiceSession.objects.select_for_update().filter(pk=session_id).first()
    if session_transfer_requested(session_id=session_id):
        return False
    session_event_append(session_id=session_id, type="call.transfer", payload=payload)
    return True


# --- support staff in live calls (issue 33, docs/supervisor.md) ----------------------------
# Views check the permission; these check the call and record who did what.

WHISPER_MAX_CHARS = 500


def _locked_live(session_id: UUID | str, what: str) -> VoiceSession:
    """The session, locked; a 409 `session_final` once it has ended (nothing to `what`)."""
    session = VoiceSession.objects.select_for_update().get(pk=session_id)
    if session.state not in LIVE_STATES:
        raise Conflict(
            "session_final", f"Session {session.id} is {session.state}; nothing to {what}.", {"state": session.state}
        )
    return session


@transaction.atomic
def session_listen(*, session_id: UUID | str, user: Any) -> MintedToken:
    """A hidden, subscribe-only LiveKit token for `user` to hear the live call, and a
    `staff.listening` event (who, as which participant). LiveKit only: the local
    transport has no room to join."""
    from django.conf import settings

    from sessions_app.tokens import staff_listen_token_mint

    session = _locked_live(session_id, "listen to")
    if settings.LIVEKIT_LOCAL_MODE:
        raise Unavailable("listen_unavailable", "Listening in needs a LiveKit server (LIVEKIT_URL).", {})
    token = staff_listen_token_mint(room=session.room_name, username=user.get_username())
    session_event_append(
        session_id=session.pk,
        type="staff.listening",
        payload={"user": user.get_username(), "identity": token.identity, "expires_at": token.expires_at.isoformat()},
    )
    return token


@transaction.atomic
def session_whisper(*, session_id: UUID | str, user: Any, text: str) -> SessionEvent:
    """Guidance from `user` for the agent's next reply: a `staff.whisper` event on the
    timeline, and the note sent to the agent's job (its context as a supervisor note)."""
    text = " ".join((text or "").split())
    if not text:
        raise InvalidInput("empty_whisper", "Type what the agent should know.", {})
    if len(text) > WHISPER_MAX_CHARS:
        raise InvalidInput(
            "whisper_too_long", f"Keep a whisper under {WHISPER_MAX_CHARS} characters.", {"length": len(text)}
        )
    session = _locked_live(session_id, "whisper to")
    event = session_event_append(
        session_id=session.pk, type="staff.whisper", payload={"user": user.get_username(), "text": text}
    )
    message = live.agent_whisper(session.pk, text=text, event_seq=event.seq)
    group = broadcast.agent_control_group(session.pk)
    transaction.on_commit(lambda: broadcast.publish([group], message))
    return event
