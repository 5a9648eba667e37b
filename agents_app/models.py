"""Agents, their versioned prompts and their latency budgets."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# The stages of a voice turn. `key` is the metric label and the Turn field prefix.
STAGES: tuple[tuple[str, str], ...] = (
    ("eou", "End of utterance"),
    ("stt", "Speech to text"),
    ("llm_ttft", "Orchestration (LLM first token)"),
    ("tool", "Tool calls"),
    ("tts_ttfb", "TTS startup (first byte)"),
    ("ttfa", "Time to first audio byte"),
    ("e2e", "End to end"),
)
STAGE_KEYS: tuple[str, ...] = tuple(key for key, _ in STAGES)

# Budget defaults (ms). Sources, see README "Latency budgets": conversational turn-taking
# gaps average ~200 ms between humans (Stivers et al., PNAS 2009); voice-AI vendors aim
# at 500–800 ms voice-to-voice and treat >1 s as noticeably slow (LiveKit, Pipecat and
# Vapi latency guides). Stage shares follow those guides' typical breakdowns.
DEFAULT_BUDGETS_MS: dict[str, int] = {
    "eou": 500,
    "stt": 300,
    "llm_ttft": 500,
    "tool": 1500,
    "tts_ttfb": 300,
    "ttfa": 900,
    "e2e": 1000,
}


class Provider(models.TextChoices):
    OFFLINE = "offline", "Offline (local stand-ins)"
    OPENAI = "openai", "OpenAI or OpenAI-compatible"
    LOCAL = "local", "Local model (llama.cpp on this machine; LLM only)"


# Providers that can serve each stage (the local llama.cpp server only answers chat).
STAGE_PROVIDERS = {
    "stt": (Provider.OFFLINE, Provider.OPENAI),
    "llm": (Provider.OFFLINE, Provider.OPENAI, Provider.LOCAL),
    "tts": (Provider.OFFLINE, Provider.OPENAI),
}


class TurnDetection(models.TextChoices):
    SMART_TURN = "smart_turn", "Semantic (Smart Turn: listens for whether the caller has finished)"
    VAD = "vad", "Silence only (answer after a fixed pause)"


class TurnEagerness(models.TextChoices):
    """How soon the agent answers a caller who may not have finished (Smart Turn only):
    the probability of "finished" below which it waits, and how long it then waits."""

    EAGER = "eager", "Eager: answers quickly, may answer a caller who was only pausing"
    BALANCED = "balanced", "Balanced (recommended)"
    PATIENT = "patient", "Patient: waits longer through pauses, answers a little later"


def _budget_field(stage: str, label: str) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        f"{label} budget (ms)",
        default=DEFAULT_BUDGETS_MS[stage],
        validators=[MinValueValidator(10), MaxValueValidator(60_000)],
    )


class Agent(models.Model):
    slug = models.SlugField(max_length=64, unique=True, help_text="Used by client apps to pick this agent.")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)

    stt_provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OFFLINE)
    stt_model = models.CharField(max_length=120, blank=True, help_text="Blank uses the provider default.")
    llm_provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OFFLINE)
    llm_model = models.CharField(max_length=120, blank=True, help_text="Blank uses the provider default.")
    tts_provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OFFLINE)
    tts_model = models.CharField(max_length=120, blank=True, help_text="Blank uses the provider default.")
    tts_voice = models.CharField(max_length=120, blank=True, help_text="Blank uses the provider default.")
    language = models.CharField(max_length=16, default="en")
    stt_phrases = models.JSONField(
        default=list,
        blank=True,
        help_text="Optional phrase hints for speech recognition (a list of strings).",
    )
    # Fallback chains (issue 11): a list of {"provider": "...", "model": "...", "base_url": "..."}.
    stt_fallbacks = models.JSONField(default=list, blank=True)
    llm_fallbacks = models.JSONField(default=list, blank=True)
    tts_fallbacks = models.JSONField(default=list, blank=True)
    allow_interruptions = models.BooleanField(default=True)
    turn_detection = models.CharField(
        max_length=16,
        choices=TurnDetection.choices,
        default=TurnDetection.SMART_TURN,
        db_default=TurnDetection.SMART_TURN,
        help_text="How the agent decides that the caller has finished speaking.",
    )
    turn_eagerness = models.CharField(
        max_length=16,
        choices=TurnEagerness.choices,
        default=TurnEagerness.BALANCED,
        db_default=TurnEagerness.BALANCED,
        help_text="With semantic end of turn: how readily the agent answers a caller who paused mid-sentence.",
    )
    ignore_backchannels = models.BooleanField(
        default=True,
        db_default=True,
        help_text='While the agent speaks, short acknowledgements ("mm-hmm", "yeah", "okay", "right") neither '
        "cut it off nor become turns; they are kept as backchannel events. Anything else still interrupts.",
    )
    barge_in_min_speech_ms = models.PositiveIntegerField(
        "Speech before barge-in (ms)",
        default=800,
        db_default=800,
        validators=[MinValueValidator(200), MaxValueValidator(3000)],
        help_text="How long the caller must speak over the agent before it stops on the sound alone. Shorter "
        'speech ("stop", "wait") interrupts as soon as its words are recognised.',
    )
    text_input = models.BooleanField(
        default=False,
        help_text="Let the caller also type to the agent (LiveKit's lk.chat text stream). Typed messages "
        "are answered and stored as the caller's turns, each cut to TEXT_INPUT_MAX_CHARS characters. "
        "Off: typed text is ignored and only speech counts.",
    )

    budget_eou_ms = _budget_field("eou", "End of utterance")
    budget_stt_ms = _budget_field("stt", "Speech to text")
    budget_llm_ttft_ms = _budget_field("llm_ttft", "Orchestration (LLM first token)")
    budget_tool_ms = _budget_field("tool", "Tool calls")
    budget_tts_ttfb_ms = _budget_field("tts_ttfb", "TTS startup")
    budget_ttfa_ms = _budget_field("ttfa", "Time to first audio byte")
    budget_e2e_ms = _budget_field("e2e", "End to end")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def budgets_ms(self) -> dict[str, int]:
        return {stage: getattr(self, f"budget_{stage}_ms") for stage in STAGE_KEYS}


class PromptStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    PUBLISHED = "published", "Published"
    ARCHIVED = "archived", "Archived"


class PromptVersion(models.Model):
    """One version of an agent's prompt. Once published, its content never changes."""

    IMMUTABLE_FIELDS = ("instructions", "greeting", "variables", "agent_id", "number")

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="prompt_versions")
    number = models.PositiveIntegerField()
    instructions = models.TextField(help_text="System instructions. Use {{variable}} placeholders.")
    greeting = models.TextField(blank=True, help_text="Spoken when a call starts. May use {{variable}}.")
    variables = models.JSONField(
        default=dict,
        blank=True,
        help_text='Default values for {{variable}} placeholders, e.g. {"company": "Acme"}.',
    )
    status = models.CharField(max_length=12, choices=PromptStatus.choices, default=PromptStatus.DRAFT)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    change_note = models.CharField(max_length=300, blank=True)
    based_on = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["agent", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="prompt_unique_number_per_agent"),
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(status="published"),
                name="prompt_one_published_per_agent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.slug} v{self.number} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Enforced here as well as in forms, so no code path can rewrite published text.
        if self._published_content_changed():
            raise ValidationError("Published and archived prompt versions are immutable.")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if not isinstance(self.variables, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in self.variables.items()
        ):
            raise ValidationError({"variables": "Variables must be an object of name → text value."})
        if self._published_content_changed():
            raise ValidationError(
                "This version is published or archived and cannot be edited. Create a new draft from it instead."
            )

    def placeholders(self) -> list[str]:
        seen: dict[str, None] = {}
        for text in (self.instructions, self.greeting):
            for name in PLACEHOLDER_RE.findall(text or ""):
                seen.setdefault(name, None)
        return list(seen)

    def _published_content_changed(self) -> bool:
        if not self.pk:
            return False
        original = type(self).objects.filter(pk=self.pk).values("status", *self.IMMUTABLE_FIELDS).first()
        if not original or original["status"] == PromptStatus.DRAFT:
            return False
        return any(getattr(self, f) != original[f] for f in self.IMMUTABLE_FIELDS)


# --- phone lines (issue 29, docs/telephony.md) ----------------------------------------
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
# "Never open to the world": the widest source range a phone line may allow.
MIN_IPV4_PREFIX = 16
MIN_IPV6_PREFIX = 32
MIN_SIP_PASSWORD = 12


def validate_e164(value: str) -> None:
    if not E164_RE.match(value or ""):
        raise ValidationError(f"{value!r} is not a phone number in E.164 form, e.g. +15550100.")


# A SIP URI of a desk or PBX (user part, host, optional port): no parameters, no headers.
SIP_URI_RE = re.compile(r"^sips?:[A-Za-z0-9_.+-]+@[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")
# A SIP server for outbound calls: a host name or IPv4 address, optional port.
SIP_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?$")


def validate_transfer_target(value: str) -> None:
    if not (E164_RE.match(value or "") or SIP_URI_RE.match(value or "")):
        raise ValidationError(
            f"{value!r} is neither a number in E.164 form (+15550199) nor a SIP URI (sip:desk@pbx.example.com)."
        )


def validate_sip_host(value: str) -> None:
    if not SIP_HOST_RE.match(value or ""):
        raise ValidationError(f"{value!r} is not a SIP server address: a host or IP, optionally :port.")


def validate_allowed_addresses(value: Any) -> None:
    import ipaddress

    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError('Allowed addresses must be a list of IP addresses or networks, e.g. ["203.0.113.0/24"].')
    for item in value:
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValidationError(f"{item!r} is not an IP address or network (CIDR).") from None
        widest = MIN_IPV4_PREFIX if network.version == 4 else MIN_IPV6_PREFIX
        if network.prefixlen < widest:
            raise ValidationError(
                f"{item!r} allows {network.num_addresses:,} addresses: a phone line is never open to the world "
                f"(at most /{widest}). List your carrier's or PBX's signalling addresses."
            )


class PhoneLine(models.Model):
    """A phone number that reaches an agent through LiveKit's SIP service.

    Saving one in the admin creates (or replaces) an inbound trunk and a dispatch rule on
    the LiveKit server (agents_app/services.py `phone_line_sync`): a call to `number` from
    an allowed address (and/or with the digest credentials) becomes a room `phone-…` with
    the platform's agent dispatched into it, and the agent opens a phone session.
    """

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="phone_lines")
    number = models.CharField(
        max_length=16, unique=True, validators=[validate_e164], help_text="The number callers dial, e.g. +15550100."
    )
    allowed_addresses = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_allowed_addresses],
        help_text="Your carrier's or PBX's signalling addresses (IPs or CIDRs), e.g. [\"203.0.113.10\", "
        '"198.51.100.0/24"]. Calls from anywhere else are refused.',
    )
    auth_username = models.CharField(
        "Digest username", max_length=64, blank=True, help_text="Optional: callers must also authenticate."
    )
    auth_password = models.CharField("Digest password", max_length=128, blank=True)
    active = models.BooleanField(default=True, help_text="Off: the line is removed from the SIP service.")
    transfer_to = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        validators=[validate_transfer_target],
        help_text="Where the agent's transfer_call tool sends callers: a number (+15550199) or your desk's "
        "SIP URI (sip:desk@pbx.example.com). Never chosen by the model or the caller. Empty: no transfers.",
    )
    outbound_address = models.CharField(
        "Outbound SIP server",
        max_length=260,
        blank=True,
        default="",
        db_default="",
        validators=[validate_sip_host],
        help_text="To place calls from this number: your carrier's or PBX's SIP server, host or host:port "
        "(e.g. sip.carrier.example:5060). Empty: the line places no calls.",
    )
    outbound_username = models.CharField(
        "Outbound digest username",
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="Optional: what the carrier asks for.",
    )
    outbound_password = models.CharField(
        "Outbound digest password", max_length=128, blank=True, default="", db_default=""
    )

    # What the LiveKit server holds for this line (set by phone_line_sync).
    livekit_trunk_id = models.CharField(max_length=64, blank=True, editable=False)
    livekit_outbound_trunk_id = models.CharField(max_length=64, blank=True, editable=False, default="", db_default="")
    livekit_rule_id = models.CharField(max_length=64, blank=True, editable=False)
    sync_error = models.TextField(blank=True, editable=False, help_text="The server's answer to the last change.")
    synced_at = models.DateTimeField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} → {self.agent.slug}"

    @property
    def room_prefix(self) -> str:
        return f"phone-{self.pk}-"

    @property
    def places_calls(self) -> bool:
        """The line can place calls: it is active and has an outbound SIP server."""
        return self.active and bool(self.outbound_address)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if bool(self.auth_username) != bool(self.auth_password):
            errors["auth_password"] = "Give both a digest username and a password, or neither."
        elif self.auth_password and len(self.auth_password) < MIN_SIP_PASSWORD:
            errors["auth_password"] = f"Use at least {MIN_SIP_PASSWORD} characters."
        if bool(self.outbound_username) != bool(self.outbound_password):
            errors["outbound_password"] = "Give both an outbound digest username and a password, or neither."
        elif (self.outbound_username or self.outbound_password) and not self.outbound_address:
            errors["outbound_address"] = "Outbound credentials need the outbound SIP server they are for."
        if not self.allowed_addresses and not self.auth_username:
            errors["allowed_addresses"] = (
                "A phone line is never open to the world: list the addresses calls come from, "
                "set digest credentials, or both."
            )
        if errors:
            raise ValidationError(errors)
