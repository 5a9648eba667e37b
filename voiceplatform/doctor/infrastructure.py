"""Doctor checks of what every call stands on: the database, Redis, Celery, and the
settings a production deployment must not keep from development."""

from __future__ import annotations

from django.conf import settings

from voiceplatform.doctor.base import FAIL, HTTP_TIMEOUT_S, OK, WARN, Check


def check_database() -> Check:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # any driver error: unreachable, refused, bad name
        return Check("database", FAIL, f"{connection.vendor}: {type(exc).__name__}: {exc}", "check DATABASE_URL")
    if pending:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:3])
        more = f" and {len(pending) - 3} more" if len(pending) > 3 else ""
        return Check(
            "database", FAIL, f"{len(pending)} migration(s) not applied: {names}{more}", "run `manage.py migrate`"
        )
    applied = len(executor.loader.applied_migrations)
    return Check("database", OK, f"{connection.vendor}, reachable, migrated ({applied} migrations applied)")


def check_redis() -> Check:
    from voiceplatform.health import redis_problem

    which = (
        f"embedded ({settings.REDIS_URL}; set REDIS_URL for production)"
        if settings.EMBEDDED_REDIS
        else settings.REDIS_URL
    )
    error = redis_problem()
    if error:
        return Check(
            "redis",
            FAIL,
            f"{which}: {error}",
            "start Redis or fix REDIS_URL: the channel layer, Celery and the rate limits need it",
        )
    return Check("redis", OK, f"{which} answers")


def check_celery(redis_ok: bool) -> Check:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return Check(
            "celery", WARN, "CELERY_TASK_ALWAYS_EAGER: tasks run inside the web process", "unset it in production"
        )
    if not redis_ok:
        return Check("celery", FAIL, "not asked: Redis (its broker) is unreachable", "fix Redis first")
    from voiceplatform.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=HTTP_TIMEOUT_S)
            replies = app.control.ping(timeout=2.0, connection=conn)
    except Exception as exc:
        return Check("celery", FAIL, f"ping failed: {type(exc).__name__}: {exc}", "check REDIS_URL")
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return Check(
            "celery",
            FAIL,
            "no worker answered a ping within 2 s",
            "start `celery -A voiceplatform worker -B`: webhooks, reports and the session reaper run there",
        )
    return Check("celery", OK, f"{len(workers)} worker(s) answered: {', '.join(workers)}")


def check_production_settings() -> Check:
    from django.core import checks

    unsafe = []
    if settings.DEBUG:
        unsafe.append("DJANGO_DEBUG is on")
    if settings.DEV_DEFAULTS:
        unsafe.append("VOICE_DEV_DEFAULTS is on")
    if settings.SECRET_KEY.startswith("dev-only-"):
        unsafe.append("DJANGO_SECRET_KEY is the development key")
    if settings.AGENT_FAULT_INJECTION:
        unsafe.append("AGENT_FAULT_INJECTION is on (staff can crash calls)")
    if not settings.VOICE_HTTPS:
        unsafe.append("VOICE_HTTPS is off (cookies sent over plain HTTP)")
    if not (settings.METRICS_TOKEN or settings.METRICS_ALLOWED_NETWORKS):
        unsafe.append("/metrics has no METRICS_TOKEN or METRICS_ALLOWED_NETWORKS")
    if settings.API_DOCS_PUBLIC:
        unsafe.append("API_DOCS_PUBLIC is on")
    deploy = [
        m.id
        for m in checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
        if not m.is_silenced()
    ]
    if deploy:
        unsafe.append(f"Django's deploy checks: {', '.join(sorted(set(deploy)))}")
    if unsafe:
        return Check(
            "production settings",
            WARN,
            "; ".join(unsafe),
            "fine for a demo; for production see docs/configuration.md and `manage.py check --deploy`",
        )
    return Check("production settings", OK, "no development defaults, HTTPS on, Django's deploy checks pass")
