"""Writing a new session with its first events: one statement on PostgreSQL.

`services.session_create` is the API's hottest write; this is its INSERT, with the cap on
live sessions per owner (MAX_LIVE_SESSIONS_PER_OWNER) checked in the same statement.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from sessions_app.models import LIVE_STATES, SessionEvent, VoiceSession
from voiceplatform.errors import LimitReached


def _too_many_live_sessions() -> Exception:
    from django.conf import settings

    limit = settings.MAX_LIVE_SESSIONS_PER_OWNER
    return LimitReached(
        "too_many_live_sessions",
        f"{limit} sessions are live already; end one (POST …/end) before opening another.",
        {"max_live_sessions": limit},
    )


def _live_owned_filter(session: VoiceSession) -> tuple[str, list[Any]] | None:
    """SQL (and params) selecting the live sessions of the new session's owner, if any."""
    table = connection.ops.quote_name(VoiceSession._meta.db_table)
    states = [str(state) for state in LIVE_STATES]
    marks = ", ".join(["%s"] * len(states))
    if session.api_client_id is not None:
        return f"SELECT 1 FROM {table} WHERE api_client_id = %s AND state IN ({marks})", [
            session.api_client_id,
            *states,
        ]
    if session.user_id is not None:
        return (
            f"SELECT 1 FROM {table} WHERE user_id = %s AND api_client_id IS NULL AND state IN ({marks})",
            [session.user_id, *states],
        )
    return None


def insert_session_with_events(session: VoiceSession, events: list[SessionEvent]) -> None:
    """INSERT a new session and its first events, both or neither.

    On PostgreSQL this is one statement (`WITH s AS (INSERT …) INSERT …`), the cap on
    live sessions per owner included: one round
    trip instead of a BEGIN, two INSERTs and a COMMIT through the ORM's insert compiler,
    which was a third of a session creation's time (bench/token_api.py, docs/api.md).
    The SQL and the values come from the models' fields (`pre_save` fills auto_now_add,
    `get_db_prep_save` adapts each value), as Django's own INSERT does; the event's
    foreign key to the session is checked at commit (Django's FKs are deferrable).
    Other databases use the ORM in a transaction.
    """
    from django.conf import settings

    limit = settings.MAX_LIVE_SESSIONS_PER_OWNER
    owned = _live_owned_filter(session)
    if connection.vendor != "postgresql":
        with transaction.atomic():
            if owned is not None:
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT count(*) FROM ({owned[0]} LIMIT %s) AS live", [*owned[1], limit])
                    if cursor.fetchone()[0] >= limit:
                        raise _too_many_live_sessions()
            session.save(force_insert=True)
            SessionEvent.objects.bulk_create(events)
        return
    # The live-session cap (issue 17) rides in the same statement: a guard row, and both
    # INSERTs select their rows only when it says the owner is under the cap.
    if owned is None:
        guard_sql, guard_params = "SELECT true AS ok", []
    else:
        guard_sql = f"SELECT count(*) < %s AS ok FROM ({owned[0]} LIMIT %s) AS live"
        guard_params = [limit, *owned[1], limit]
    when = "(SELECT ok FROM guard)"
    session_sql, params = _insert_select(session, [session], when)
    events_sql, event_params = _insert_select(events[0], events, when)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH guard AS ({guard_sql}), new_session AS ({session_sql}) {events_sql}",
            guard_params + params + event_params,
        )
        if cursor.rowcount == 0:
            raise _too_many_live_sessions()
    for obj in (session, *events):
        obj._state.adding = False
        obj._state.db = connection.alias


def _insert_value(field: Any, obj: Any) -> Any:
    """The value the INSERT writes; a field left at DatabaseDefault gets its `db_default`."""
    from django.db.models.expressions import DatabaseDefault, Expression, Value

    value = field.pre_save(obj, add=True)
    if isinstance(value, DatabaseDefault):
        default = field.db_default
        if isinstance(default, Value):
            return default.value
        if isinstance(default, Expression):
            raise ValueError(f"{field}: only a constant db_default can be written by insert_session_with_events")
        return default
    return value


def _insert_select(model_obj: Any, objs: list[Any], when: str) -> tuple[str, list[Any]]:
    """`INSERT INTO t (cols) SELECT …, … WHERE when UNION ALL …` and its parameters.

    Each value is cast to its column's type, as VALUES would infer it from the target.
    """
    meta = model_obj._meta
    # Every column the model writes, those with a `db_default` too (Django marks them
    # `db_returning`, but a value set on the object must be written, not the default);
    # only database-generated keys are left to the database.
    fields = [f for f in meta.concrete_fields if f.has_db_default() or not getattr(f, "db_returning", False)]
    qn = connection.ops.quote_name
    casts = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields)
    params: list[Any] = []
    for obj in objs:
        params += [f.get_db_prep_save(_insert_value(f, obj), connection=connection) for f in fields]
    columns = ", ".join(qn(f.column) for f in fields)
    rows = " UNION ALL ".join([f"SELECT {casts} WHERE {when}"] * len(objs))
    return f"INSERT INTO {qn(meta.db_table)} ({columns}) {rows}", params
