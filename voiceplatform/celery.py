"""The Celery app, configured from Django settings (CELERY_* names).

Start it with `celery -A voiceplatform worker -B` (beat inside the worker for one-box
deployments; run `celery -A voiceplatform beat` separately when there are several
workers). Delivery is at-least-once (acks_late, reject on worker lost, prefetch 1,
visibility timeout longer than the longest task), so every task is idempotent.
Logging goes through Django's LOGGING (JSON with LOG_FORMAT=json), each line carrying
the task id and name, and the session id where the task binds it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")

app = Celery("voiceplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def beat_schedule(*, stale_session_seconds: int, report_backfill_every: float = 300.0) -> dict[str, dict[str, Any]]:
    # The reaper runs several times per stale period, so a dead agent's session is
    # failed within about 1.3 × STALE_SESSION_SECONDS.
    reaper_every = max(5.0, stale_session_seconds / 3)
    return {
        "reap-stale-sessions": {
            "task": "sessions_app.tasks.sessions_reap_stale",
            "schedule": timedelta(seconds=reaper_every),
            "options": {"expires": reaper_every},
        },
        "backfill-post-call-reports": {
            "task": "sessions_app.tasks.session_reports_backfill",
            "schedule": timedelta(seconds=report_backfill_every),
            "options": {"expires": report_backfill_every},
        },
        "backfill-livekit-webhooks": {
            "task": "sessions_app.tasks.livekit_webhooks_backfill",
            "schedule": timedelta(minutes=1),
            "options": {"expires": 60},
        },
        "resolve-expired-tool-calls": {
            "task": "tools_app.tasks.tool_invocations_resolve_expired",
            "schedule": timedelta(minutes=1),
            "options": {"expires": 60},
        },
        "retention-purge": {
            "task": "sessions_app.tasks.retention_purge",
            "schedule": crontab(hour=3, minute=30),
        },
    }


@app.on_after_configure.connect
def _configure_from_settings(sender: Celery, **_: Any) -> None:
    """Settings-derived defaults, applied when the app first reads its configuration
    (not at import: this module is imported while Django settings are still loading)."""
    from django.conf import settings

    conf = sender.conf
    conf.beat_schedule = {
        **beat_schedule(
            stale_session_seconds=settings.STALE_SESSION_SECONDS,
            report_backfill_every=settings.REPORT_BACKFILL_EVERY_SECONDS,
        ),
        **(conf.beat_schedule or {}),
    }
    conf.beat_schedule_filename = str(settings.DATA_DIR / "celerybeat-schedule")
    # With acks_late, a task cut off by a lost broker connection is redelivered
    # anyway; cancelling it avoids running it twice at once (Celery 5.x advice).
    conf.worker_cancel_long_running_tasks_on_connection_loss = True
    conf.broker_connection_retry_on_startup = True


@signals.setup_logging.connect
def _use_django_logging(**_: Any) -> None:
    """Connected, so Celery does not install its own handlers: Django's LOGGING rules."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


_task_log_tokens: dict[str, Any] = {}


@signals.task_prerun.connect
def _bind_task_log_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from voiceplatform.logging import push_log_context

    # In a worker each task starts from a clean context (a pooled process runs many);
    # an eager task (tests, CELERY_TASK_ALWAYS_EAGER) keeps its caller's fields, e.g. the
    # request id, and hands them back untouched afterwards.
    eager = bool(getattr(getattr(task, "request", None), "is_eager", False))
    if task_id:
        _task_log_tokens[task_id] = push_log_context(inherit=eager, task_id=task_id, task=getattr(task, "name", None))


@signals.task_postrun.connect
def _clear_task_log_context(task_id: str | None = None, **_: Any) -> None:
    from voiceplatform.logging import pop_log_context

    token = _task_log_tokens.pop(task_id or "", None)
    if token is not None:
        pop_log_context(token)
