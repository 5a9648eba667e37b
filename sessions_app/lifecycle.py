"""One writer for each change of who is in a call, for both transports.

The LiveKit webhooks (sessions_app.webhooks) and the local transport
(agents_app.runtime.worker.local_server) both call these services, so one test of a rule tests
it for both paths:

- `session_caller_joined` / `session_caller_left`: the caller's connections. Each
  connection has an id (LiveKit participant SID) and a join time; a connection that
  joined before the current one never replaces it, and only the current connection's
  leave moves the session to `reconnecting`. A late `participant_left` of an old
  connection, processed after the new one's `participant_joined`, changes nothing.
- `session_agent_dispatched` / `session_agent_joined` / `session_agent_left`: the agent.
  A LiveKit server accepts a dispatch even when no worker can take it and never
  dispatches again by itself, so the platform does: a dispatch that has not joined in
  AGENT_JOIN_TIMEOUT_SECONDS is repeated (`session_agent_join_check`), up to
  AGENT_DISPATCH_ATTEMPTS, then the session fails with `agent_unavailable`; an agent that
  leaves a live session (its job crashed or ended) is dispatched again at once when the
  caller is there, else when the caller rejoins. The new job rebuilds the context from
  the stored turns and does not greet again.

Each service is atomic, locks the session row, writes one event per change and publishes
after commit (through `session_event_append` / `session_transition`). Network calls (a
LiveKit dispatch) happen after commit, never under the row lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from sessions_app.models import FINAL_STATES, AgentStatus, SessionChannel, SessionEvent, SessionState, VoiceSession
from sessions_app.services import (
    session_event_append,
    session_publish_updated,
    session_reconnect_count,
    session_transition,
)

logger = logging.getLogger(__name__)


# The agent left because the room itself is closing (its caller gone past the departure
# window, or the platform deleted it): the end of a call, not a lost agent.
ROOM_CLOSING_REASONS = frozenset({"ROOM_DELETED", "ROOM_CLOSED"})


class SessionFinal(Exception):
    def __init__(self, session: VoiceSession) -> None:
        super().__init__(f"session {session.id} is {session.state}")
        self.session = session


@dataclass(frozen=True)
class CallerJoined:
    session: VoiceSession
    applied: bool  # False: a connection older than the current one; nothing changed
    needs_agent: bool  # no agent serves the session (it was lost): start or dispatch one


@dataclass(frozen=True)
class AgentLeft:
    session: VoiceSession
    applied: bool  # False: not the agent serving the session (an older or extra job)
    redispatch: bool  # the caller is in the call without an agent: dispatch one now


def _locked(session_id: UUID | str) -> VoiceSession:
    return VoiceSession.objects.select_for_update().select_related("agent", "prompt_version").get(pk=session_id)


def _livekit() -> bool:
    return not settings.LIVEKIT_LOCAL_MODE


# --- the caller ------------------------------------------------------------------------------


@transaction.atomic
def session_caller_joined(
    *,
    session_id: UUID | str,
    connection: str,
    joined_at_ms: int | None,
    source: str,
    payload: dict[str, Any] | None = None,
) -> CallerJoined:
    """The caller connected (a LiveKit `participant_joined`, or a local hello).

    Raises SessionFinal when the session has ended: the local host refuses the caller,
    the webhook only notes it.
    """
    session = _locked(session_id)
    base = {"connection": connection, "source": source, **(payload or {})}
    if session.state in FINAL_STATES:
        raise SessionFinal(session)
    if (
        joined_at_ms is not None
        and session.caller_joined_at_ms is not None
        and joined_at_ms < session.caller_joined_at_ms
        and connection != session.caller_connection
    ):
        session_event_append(session_id=session.pk, type="caller.joined", payload={**base, "stale": True})
        return CallerJoined(session=session, applied=False, needs_agent=False)

    counted = _count_rejoin(session=session, source=source)
    VoiceSession.objects.filter(pk=session.pk).update(
        caller_connection=connection[:64], caller_joined_at_ms=joined_at_ms
    )
    session_event_append(session_id=session.pk, type="caller.joined", payload={**base, "reconnect_counted": counted})
    if session.state in (SessionState.CREATED, SessionState.RECONNECTING):
        session = session_transition(session_id=session.pk, to_state=SessionState.ACTIVE, reason="caller_joined")
    else:
        session.refresh_from_db()
        session_publish_updated(session=session)
    needs_agent = session.agent_status == AgentStatus.LOST
    if needs_agent and _livekit():
        _dispatch_after_commit(session.pk, reason="caller rejoined a session whose agent was lost")
    return CallerJoined(session=session, applied=True, needs_agent=needs_agent)


@transaction.atomic
def session_caller_left(
    *, session_id: UUID | str, connection: str, reason: str, payload: dict[str, Any] | None = None
) -> bool:
    """The caller's connection ended. Returns whether it was the current one (state changed)."""
    session = _locked(session_id)
    current = not session.caller_connection or connection == session.caller_connection
    base = {"connection": connection, "reason": reason, **(payload or {})}
    if not current:
        # An older connection's leave, after the caller already came back on a new one.
        session_event_append(session_id=session.pk, type="caller.left", payload={**base, "stale": True})
        return False
    session_event_append(session_id=session.pk, type="caller.left", payload=base)
    if session.state == SessionState.ACTIVE:
        session_transition(session_id=session.pk, to_state=SessionState.RECONNECTING, reason=reason)
    return True


def _count_rejoin(*, session: VoiceSession, source: str) -> bool:
    """Count a reconnect when a caller who had joined before joins again.

    Not if the client already asked for it through POST …/reconnect since the caller's
    previous join: that call counted it (one drop, one reconnect).
    """
    previous_join = (
        SessionEvent.objects.filter(session=session, type="caller.joined")
        .exclude(payload__has_key="stale")
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    if previous_join is None:
        return False
    if SessionEvent.objects.filter(session=session, type="session.reconnect", seq__gt=previous_join).exists():
        return False
    session_reconnect_count(session=session, source=source)
    return True


# --- the agent --------------------------------------------------------------------------------


@transaction.atomic
def session_agent_dispatched(
    *, session_id: UUID | str, mode: str, dispatch_id: str = "", reason: str = "", error: str = ""
) -> VoiceSession:
    """An agent was asked for (or the ask failed: `error`). Counts the attempt, starts the wait."""
    session = _locked(session_id)
    VoiceSession.objects.filter(pk=session.pk).update(
        agent_status=AgentStatus.DISPATCHED,
        agent_dispatch_attempts=F("agent_dispatch_attempts") + 1,
        agent_dispatch_count=F("agent_dispatch_count") + 1,
        agent_dispatched_at=timezone.now(),
    )
    session.refresh_from_db()
    payload: dict[str, Any] = {
        "mode": mode,
        "agent_name": settings.LIVEKIT_AGENT_NAME,
        "attempt": session.agent_dispatch_attempts,
    }
    if dispatch_id:
        payload["dispatch_id"] = dispatch_id
    if reason:
        payload["reason"] = reason
    if error:
        payload["error"] = error[:300]
    session_event_append(session_id=session.pk, type="agent.dispatch_requested", payload=payload)
    if mode == "livekit":
        _join_check_after_commit(session.pk, session.agent_dispatch_count)
    return session


@transaction.atomic
def session_agent_joined(*, session_id: UUID | str, identity: str, job_id: str = "", source: str) -> bool:
    """An agent joined the call. Returns False when another agent already serves it."""
    session = _locked(session_id)
    if session.state in FINAL_STATES:
        session_event_append(
            session_id=session.pk, type="agent.joined", payload={"identity": identity, "source": source, "late": True}
        )
        return False
    if session.agent_status == AgentStatus.JOINED and session.agent_identity == identity:
        return True  # the job and the webhook both report the same join
    if session.agent_status == AgentStatus.JOINED and session.agent_identity and session.agent_identity != identity:
        # Two jobs for one session (a re-dispatch raced a slow join): keep the first.
        session_event_append(
            session_id=session.pk,
            type="agent.duplicate",
            payload={"identity": identity, "serving": session.agent_identity, "source": source},
        )
        if _livekit():
            room, extra = session.room_name, identity
            transaction.on_commit(lambda: _remove_participant_quietly(room=room, identity=extra))
        return False
    VoiceSession.objects.filter(pk=session.pk).update(
        agent_status=AgentStatus.JOINED,
        agent_identity=identity[:128],
        agent_job_id=(job_id or session.agent_job_id)[:64],
        agent_dispatch_attempts=0,
    )
    session_event_append(
        session_id=session.pk, type="agent.joined", payload={"identity": identity, "job_id": job_id, "source": source}
    )
    session.refresh_from_db()
    session_publish_updated(session=session)
    return True


@transaction.atomic
def session_agent_left(
    *, session_id: UUID | str, identity: str, reason: str, source: str, payload: dict[str, Any] | None = None
) -> AgentLeft:
    """The agent serving the session left the room (its job ended, crashed or was killed).

    While the session is live that is a loss: with the caller in the call, a new agent is
    dispatched at once (LiveKit: here, after commit; local: the caller's host starts a
    job when `redispatch` is True); without the caller, when the caller rejoins.
    """
    session = _locked(session_id)
    base = {"identity": identity, "reason": reason, "source": source, **(payload or {})}
    serving = session.agent_status == AgentStatus.JOINED and session.agent_identity == identity
    if session.state in FINAL_STATES or not serving or reason in ROOM_CLOSING_REASONS:
        session_event_append(session_id=session.pk, type="agent.left", payload={**base, "serving": serving})
        if serving:
            VoiceSession.objects.filter(pk=session.pk).update(agent_status=AgentStatus.NONE, agent_identity="")
        return AgentLeft(session=session, applied=False, redispatch=False)
    VoiceSession.objects.filter(pk=session.pk).update(agent_status=AgentStatus.LOST, agent_identity="")
    session_event_append(session_id=session.pk, type="agent.lost", payload=base)
    session.refresh_from_db()
    session_publish_updated(session=session)
    redispatch = session.state == SessionState.ACTIVE
    if redispatch and _livekit():
        _dispatch_after_commit(session.pk, reason=f"agent lost ({reason}) with the caller in the call")
    return AgentLeft(session=session, applied=True, redispatch=redispatch)


@transaction.atomic
def session_agent_join_check(*, session_id: UUID | str, dispatch: int) -> str:
    """The agent-join wait of the session's `dispatch`-th dispatch ran out: dispatch again,
    or give up after AGENT_DISPATCH_ATTEMPTS dispatches in a row that no agent answered.

    Returns what was done: "joined" (nothing to do), "stale", "redispatch", "unavailable".
    """
    session = _locked(session_id)
    if session.state in FINAL_STATES or session.agent_status != AgentStatus.DISPATCHED:
        return "joined" if session.agent_status == AgentStatus.JOINED else "stale"
    if session.agent_dispatch_count != dispatch:
        return "stale"  # a later dispatch owns the wait (dispatch numbers never repeat)
    attempt = session.agent_dispatch_attempts
    waited = settings.AGENT_JOIN_TIMEOUT_SECONDS
    if attempt < settings.AGENT_DISPATCH_ATTEMPTS:
        session_event_append(
            session_id=session.pk, type="agent.join_timeout", payload={"attempt": attempt, "waited_s": waited}
        )
        _dispatch_after_commit(session.pk, reason=f"no agent joined within {waited} s (attempt {attempt})")
        return "redispatch"
    VoiceSession.objects.filter(pk=session.pk).update(agent_status=AgentStatus.UNAVAILABLE)
    session_event_append(
        session_id=session.pk,
        type="agent.unavailable",
        payload={"attempts": attempt, "waited_s": waited, "agent_name": settings.LIVEKIT_AGENT_NAME},
    )
    session_transition(
        session_id=session.pk,
        to_state=SessionState.FAILED,
        reason="agent_unavailable",
        payload={"detail": f"no agent joined after {attempt} dispatches, {waited} s each"},
    )
    if session.channel == SessionChannel.PHONE:
        # A phone caller would otherwise hear ringing until the trunk's ringing timeout.
        from sessions_app import livekit_server

        room = session.room_name
        transaction.on_commit(lambda: livekit_server.room_delete_quietly(room=room))
    return "unavailable"


def session_agent_dispatch(*, session_id: UUID | str, reason: str = "") -> VoiceSession | None:
    """Dispatch the platform's agent to a live session's room (LiveKit), then record it.

    The network call happens outside any transaction. A failed dispatch is recorded as an
    attempt with its error, so the join check retries it like a dispatch that never joined.
    """
    from sessions_app import livekit_server

    session = VoiceSession.objects.filter(pk=session_id).only("id", "room_name", "state").first()
    if session is None or session.state in FINAL_STATES:
        return None
    try:
        dispatch_id = livekit_server.agent_dispatch_create(room=session.room_name, session_id=str(session.pk))
    except livekit_server.LiveKitServerError as exc:
        logger.warning("re-dispatch of the agent for %s failed: %s", session.pk, exc)
        return session_agent_dispatched(session_id=session.pk, mode="livekit", reason=reason, error=str(exc))
    return session_agent_dispatched(session_id=session.pk, mode="livekit", dispatch_id=dispatch_id, reason=reason)


# --- after-commit hooks ---------------------------------------------------------------------


def _dispatch_after_commit(session_id: UUID, *, reason: str) -> None:
    def enqueue() -> None:
        try:
            from sessions_app.tasks import session_agent_dispatch_task

            session_agent_dispatch_task.delay(str(session_id), reason)
        except Exception:  # no broker: dispatch here, the caller is waiting for an agent
            logger.warning("could not queue the agent dispatch for %s; dispatching now", session_id, exc_info=True)
            try:
                session_agent_dispatch(session_id=session_id, reason=reason)
            except Exception:
                logger.exception("agent dispatch for %s failed", session_id)

    transaction.on_commit(enqueue)


def _join_check_after_commit(session_id: UUID, dispatch: int) -> None:
    def enqueue() -> None:
        try:
            from sessions_app.tasks import session_agent_join_check_task

            session_agent_join_check_task.apply_async(
                (str(session_id), dispatch), countdown=settings.AGENT_JOIN_TIMEOUT_SECONDS
            )
        except Exception:  # the stale-session reaper still fails a session no agent joined
            logger.warning("could not schedule the agent-join check for %s", session_id, exc_info=True)

    transaction.on_commit(enqueue)


def _remove_participant_quietly(*, room: str, identity: str) -> None:
    from sessions_app import livekit_server

    try:
        livekit_server.participant_remove(room=room, identity=identity)
    except livekit_server.LiveKitServerError:
        logger.warning("could not remove the extra agent %s from %s", identity, room, exc_info=True)
