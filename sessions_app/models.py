"""API clients, voice sessions, their turns and their event timeline."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from agents_app.models import STAGE_KEYS


class ApiScope(models.TextChoices):
    CLIENT = "client", "Client app"
    AGENT = "agent", "Agent (tool invocations)"


CALL_DESTINATION_RE = re.compile(r"^\+[1-9][0-9]{0,14}$")


def validate_call_destinations(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and CALL_DESTINATION_RE.match(v) for v in value):
        raise ValidationError('Call destinations are E.164 prefixes: a list like ["+1555", "+442071234567"].')


def call_destination_allowed(destinations: list[str], number: str) -> bool:
    """`number` starts with one of the allowed prefixes (and at least one is set)."""
    return any(number.startswith(prefix) for prefix in destinations or [])


class ApiClient(models.Model):
    name = models.CharField(max_length=120, unique=True)
    key_prefix = models.CharField(max_length=16, db_index=True, help_text="First characters, to find a key.")
    key_hash = models.CharField(max_length=64, unique=True, help_text="sha256 of the key; the key is never stored.")
    scope = models.CharField(max_length=8, choices=ApiScope.choices, default=ApiScope.CLIENT)
    active = models.BooleanField(default=True)
    webhook_url = models.URLField(blank=True, help_text="Post-call reports are POSTed here, signed.")
    webhook_secret = models.CharField(max_length=128, blank=True, help_text="HMAC secret for report webhooks.")
    agents = models.ManyToManyField(
        "agents_app.Agent",
        blank=True,
        related_name="agent_keys",
        help_text="Agent-scope keys only: the agents whose live sessions this key may call tools for.",
    )
    call_destinations = models.JSONField(
        default=list,
        blank=True,
        db_default=[],
        validators=[validate_call_destinations],
        help_text="Client keys: the numbers this key may have the platform call (POST /calls), as E.164 "
        'prefixes, e.g. ["+1555", "+442071234567"]. Empty: the key places no calls.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.scope})"


class SessionState(models.TextChoices):
    CREATED = "created", "Created"
    ACTIVE = "active", "Active"
    RECONNECTING = "reconnecting", "Reconnecting"
    ENDED = "ended", "Ended"
    FAILED = "failed", "Failed"


class AgentStatus(models.TextChoices):
    """Where the session's agent is (LiveKit: the agent participant in the room)."""

    NONE = "none", "Not dispatched"
    DISPATCHED = "dispatched", "Dispatched, not joined yet"
    JOINED = "joined", "In the call"
    LOST = "lost", "Lost (job ended or crashed)"
    UNAVAILABLE = "unavailable", "Never joined"


LIVE_STATES = (SessionState.CREATED, SessionState.ACTIVE, SessionState.RECONNECTING)
FINAL_STATES = (SessionState.ENDED, SessionState.FAILED)

# created → active → reconnecting → active … → ended | failed
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    SessionState.CREATED: frozenset({SessionState.ACTIVE, SessionState.ENDED, SessionState.FAILED}),
    SessionState.ACTIVE: frozenset({SessionState.RECONNECTING, SessionState.ENDED, SessionState.FAILED}),
    SessionState.RECONNECTING: frozenset({SessionState.ACTIVE, SessionState.ENDED, SessionState.FAILED}),
    SessionState.ENDED: frozenset(),
    SessionState.FAILED: frozenset(),
}


class SessionChannel(models.TextChoices):
    WEBRTC = "webrtc", "Browser or app (WebRTC)"
    PHONE = "phone", "Phone (SIP)"


class CallDirection(models.TextChoices):
    INBOUND = "inbound", "The caller called"
    OUTBOUND = "outbound", "The platform called"


def mask_phone_number(number: str) -> str:
    """What support staff see of a caller's number: the first two and last two characters."""
    if len(number) <= 6:
        return "•" * len(number)
    return f"{number[:2]}{'•' * (len(number) - 4)}{number[-2:]}"


# A phone number inside a room name (LiveKit's SIP service names a call's room
# `<prefix>_<caller's number>_<random>`).
_NUMBER_IN_ROOM = re.compile(r"(?<=_)\+?[0-9]{6,15}(?=_)")


def mask_room_name(room: str) -> str:
    """A room's name as logs and staff may show it: any phone number in it masked."""
    return _NUMBER_IN_ROOM.sub(lambda found: mask_phone_number(found.group(0)), room)


class VoiceSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_client = models.ForeignKey(ApiClient, null=True, blank=True, on_delete=models.PROTECT, related_name="sessions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="voice_sessions",
        help_text="Set for calls started from the browser call page.",
    )
    caller_id = models.CharField(
        max_length=128, help_text="The client's id for the caller (a phone call: the caller's number, masked)."
    )
    channel = models.CharField(
        max_length=8, choices=SessionChannel.choices, default=SessionChannel.WEBRTC, db_default=SessionChannel.WEBRTC
    )
    phone_line = models.ForeignKey(
        "agents_app.PhoneLine", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    direction = models.CharField(
        max_length=8, choices=CallDirection.choices, default=CallDirection.INBOUND, db_default=CallDirection.INBOUND
    )
    # Phone calls: the caller's full number (never on the dashboard: caller_id is masked)
    # and the SIP participant's identity in the room (the platform minted no token for it).
    caller_number = models.CharField(max_length=32, blank=True, default="", db_default="")
    caller_participant = models.CharField(max_length=128, blank=True, default="", db_default="")
    room_name = models.CharField(max_length=128, unique=True)
    agent = models.ForeignKey("agents_app.Agent", on_delete=models.PROTECT, related_name="sessions")
    prompt_version = models.ForeignKey("agents_app.PromptVersion", on_delete=models.PROTECT, related_name="sessions")
    metadata = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=SessionState.choices, default=SessionState.CREATED)
    end_reason = models.CharField(max_length=200, blank=True)
    reconnect_count = models.PositiveIntegerField(default=0)
    interrupt_count = models.PositiveIntegerField(default=0)
    turn_count = models.PositiveIntegerField(default=0)
    last_e2e_ms = models.FloatField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0, help_text="Sequence number of the latest event.")
    agent_job_id = models.CharField(max_length=64, blank=True)
    agent_status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.NONE)
    agent_identity = models.CharField(
        max_length=128, blank=True, help_text="The agent participant serving the session now (LiveKit identity)."
    )
    agent_dispatch_attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Dispatches since the agent last joined (reset when it joins)."
    )
    agent_dispatch_count = models.PositiveIntegerField(
        default=0, help_text="Dispatches in all; each agent-join check names the dispatch it waits for."
    )
    agent_dispatched_at = models.DateTimeField(null=True, blank=True)
    caller_connection = models.CharField(
        max_length=64, blank=True, help_text="The caller's current connection: LiveKit participant SID or local id."
    )
    caller_joined_at_ms = models.BigIntegerField(
        null=True, blank=True, help_text="When that connection joined (ms): an older one never replaces it."
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    report = models.JSONField(null=True, blank=True, help_text="Post-call report (KPIs and summary).")
    report_delivery_id = models.UUIDField(null=True, blank=True)
    report_delivered_at = models.DateTimeField(null=True, blank=True)
    # The report webhook's send lease (sessions_app/reports.py): one attempt at a time may
    # send, and none once it is delivered.
    report_delivery_holder = models.CharField(max_length=128, blank=True, default="", db_default="")
    report_delivery_lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "-created_at"]),
            models.Index(fields=["api_client", "-created_at"]),
            # The live-session cap counts a client's live sessions at every creation.
            models.Index(fields=["api_client", "state"]),
        ]
        # Support staff stepping into live calls (docs/supervisor.md), each granted in the admin.
        permissions = [
            ("listen_voicesession", "Can listen in to live calls"),
            ("whisper_voicesession", "Can whisper guidance to the agent of a live call"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def room_shown(self) -> str:
        """The room's name as staff see it: a phone call's room carries the caller's number
        (LiveKit's SIP service names it `<prefix>_<number>_<random>`), masked here."""
        if self.caller_number and self.caller_number in self.room_name:
            return self.room_name.replace(self.caller_number, mask_phone_number(self.caller_number))
        return mask_room_name(self.room_name)

    @property
    def caller_key(self) -> str:
        """The caller as the platform knows them: the client's caller id is only unique
        within that client (or browser user), so tools key customers by this."""
        return caller_key(
            api_client_id=self.api_client_id,
            user_id=self.user_id,
            caller_id=self.caller_id,
            caller_number=self.caller_number,
        )


def caller_key(*, api_client_id: int | None, user_id: int | None, caller_id: str, caller_number: str = "") -> str:
    if caller_number:  # a phone caller is known by their number (caller_id is only its mask)
        return f"phone:{caller_number}"
    namespace = f"client-{api_client_id}" if api_client_id else f"user-{user_id}" if user_id else "anonymous"
    return f"{namespace}:{caller_id}"


def _stage_field() -> models.FloatField:
    return models.FloatField(null=True, blank=True)


class Turn(models.Model):
    session = models.ForeignKey(VoiceSession, on_delete=models.CASCADE, related_name="turns")
    index = models.PositiveIntegerField()
    user_text = models.TextField(blank=True)
    generated_text = models.TextField(blank=True, help_text="What the LLM produced.")
    heard_text = models.TextField(blank=True, help_text="What the caller heard before any interruption.")
    interrupted = models.BooleanField(default=False)
    interrupt_source = models.CharField(max_length=16, blank=True, help_text="vad or client")
    eou_ms = _stage_field()
    stt_ms = _stage_field()
    llm_ttft_ms = _stage_field()
    tool_ms = _stage_field()
    tts_ttfb_ms = _stage_field()
    ttfa_ms = _stage_field()
    e2e_ms = _stage_field()
    breaches = models.JSONField(default=list, blank=True, help_text="Stages over the agent's budget.")
    # Reported by the caller after the fact (PUT …/turns/{index}/heard, docs/latency.md).
    heard_gap_ms = models.FloatField(
        null=True, blank=True, help_text="Caller-heard gap: its last speech sample sent → first agent audio heard."
    )
    heard_barge_in_ms = models.FloatField(
        null=True, blank=True, help_text="Caller barged in: its first speech sample → the agent's audio stopped."
    )
    heard_difference_ms = models.FloatField(
        null=True, blank=True, help_text="Heard gap minus the platform's e2e (ttfa when e2e is missing)."
    )
    # db_default: agent workers of the previous release, still writing turns during a rolling
    # deploy after this column's migration ran, do not know it (their INSERT omits it).
    heard_mismatch = models.BooleanField(
        default=False, db_default=False, help_text="The difference is beyond HEARD_GAP_TOLERANCE_MS."
    )
    heard_reported_at = models.DateTimeField(null=True, blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "index"]
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="turn_unique_index")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"turn {self.index} of {self.session_id}"

    def stage_ms(self) -> dict[str, float | None]:
        return {stage: getattr(self, f"{stage}_ms") for stage in STAGE_KEYS}

    def platform_gap_ms(self) -> float | None:
        """The platform's own figure for the gap the caller hears: e2e (end of user speech
        as the VAD placed it → first agent audio played), else ttfa (first audio handed out)."""
        return self.e2e_ms if self.e2e_ms is not None else self.ttfa_ms


class SessionEvent(models.Model):
    """Append-only timeline of a session. `seq` is gapless per session."""

    session = models.ForeignKey(VoiceSession, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The agent writer's own id for the record (a retried write is stored once); else "".
    record_key = models.CharField(max_length=40, blank=True, default="", db_default="", editable=False)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="event_unique_seq"),
            models.UniqueConstraint(
                fields=["session", "record_key"],
                condition=~models.Q(record_key=""),
                name="event_unique_record_key",
            ),
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"


class LiveKitWebhookEvent(models.Model):
    """Received LiveKit webhooks, unique on the event id (delivery is at-least-once)."""

    event_id = models.CharField(max_length=128, unique=True)
    event = models.CharField(max_length=64)
    room_name = models.CharField(max_length=128, blank=True)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event} {self.event_id}"
