"""Tool definitions, the idempotency ledger, and the demo tools' side-effect tables."""

from __future__ import annotations

import os
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

TOOL_NAME_VALIDATOR = RegexValidator(
    r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$",
    "Use letters, digits and underscores, starting with a letter (max 64).",
)
# Headers whose value is a credential: refused among the plain (stored) headers.
SECRET_HEADER_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"})
# Headers the platform sets on every call: the ledger key, the identity it asserts, and
# the signature over them (tools_app/executors.py).
RESERVED_HEADER_NAMES = frozenset(
    {"idempotency-key", "x-voice-session", "x-voice-caller", "x-voice-agent", "x-voice-signature"}
)
# A secret header may only name an environment variable with this prefix: an editor who
# could name any variable could send DJANGO_SECRET_KEY or LIVEKIT_API_SECRET to their host.
TOOL_SECRET_PREFIX = "TOOL_SECRET_"
ENV_NAME_VALIDATOR = RegexValidator(
    rf"^{TOOL_SECRET_PREFIX}[A-Z0-9_]+$",
    f"Name an environment variable that starts with {TOOL_SECRET_PREFIX}, e.g. {TOOL_SECRET_PREFIX}CRM_TOKEN.",
)


def tool_secret_name_allowed(name: str) -> bool:
    """Whether a secret header may read this environment variable (at save and at call time)."""
    try:
        ENV_NAME_VALIDATOR(name)
    except ValidationError:
        return False
    return True


def secret_env_state(name: str) -> str:
    """What the admin and `manage.py doctor` may say of a variable a tool names: "set",
    "NOT SET" or not allowed, never its value, nothing about names outside the prefix."""
    if not tool_secret_name_allowed(name):
        return f"not allowed (only {TOOL_SECRET_PREFIX}… variables)"
    return "set" if os.environ.get(name) else "NOT SET"


class ToolKind(models.TextChoices):
    BUILTIN = "builtin", "Built-in (Python function)"
    HTTP = "http", "HTTP endpoint"


class ToolDefinition(models.Model):
    name = models.CharField(max_length=64, unique=True, validators=[TOOL_NAME_VALIDATOR])
    description = models.TextField(help_text="What the tool does. The LLM reads this to decide when to call it.")
    parameters = models.JSONField(
        default=dict,
        blank=True,
        help_text='JSON Schema of the arguments, e.g. {"type": "object", "properties": {...}}.',
    )
    kind = models.CharField(max_length=16, choices=ToolKind.choices, default=ToolKind.BUILTIN)
    builtin_name = models.CharField(max_length=64, blank=True, help_text="Registered Python function (built-in).")
    http_url = models.URLField(blank=True)
    http_method = models.CharField(
        max_length=8, default="POST", choices=[(m, m) for m in ("GET", "POST", "PUT", "PATCH", "DELETE")]
    )
    http_headers = models.JSONField(default=dict, blank=True, help_text="Non-secret headers sent as they are.")
    http_secret_headers = models.JSONField(
        default=dict,
        blank=True,
        help_text='Header name → environment variable name, e.g. {"Authorization": "TOOL_SECRET_CRM_TOKEN"}. '
        "Only variables named TOOL_SECRET_… may be used. The value is read from the environment at call time "
        "and never stored.",
    )
    http_signing_secret = models.CharField(
        max_length=120,
        blank=True,
        validators=[ENV_NAME_VALIDATOR],
        help_text="A TOOL_SECRET_… environment variable whose value signs each request, with the session, "
        "caller and agent the platform asserts (X-Voice-Signature; see docs/tools.md). Empty: the identity "
        "headers are sent unsigned.",
    )
    timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.1), MaxValueValidator(120)])
    max_retries = models.PositiveSmallIntegerField(default=2, validators=[MaxValueValidator(10)])
    idempotent = models.BooleanField(
        default=False,
        help_text="Safe to run twice: a read, or an HTTP endpoint that honours the Idempotency-Key header. "
        "Only idempotent tools are retried after a timeout or re-run after a crash.",
    )
    run_in_background = models.BooleanField(default=False, help_text="Run as a Celery task (slow tools).")
    requires_confirmation = models.BooleanField(
        default=False,
        help_text="Runs only after the caller says yes: the agent is told to ask first, and the call runs when "
        "the caller's next message is a yes (checked by the platform, not the model). Not callable through "
        "the tools API.",
    )
    max_calls_per_session = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many calls of the tool in one voice session (failed calls do not count). "
        "Empty: no cap. For money amounts per call, set a maximum in the JSON Schema.",
    )
    enabled = models.BooleanField(default=True)
    agents = models.ManyToManyField("agents_app.Agent", blank=True, related_name="tools")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            (
                "change_tool_endpoint",
                "Can change where an HTTP tool sends requests and which secrets it sends",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def secret_variables(self) -> list[tuple[str, str]]:
        """(header, environment variable) for each secret this tool reads at call time."""
        from voiceplatform.signing import SIGNATURE_HEADER

        pairs = [(str(h), str(env)) for h, env in (self.http_secret_headers or {}).items()]
        if self.http_signing_secret:
            pairs.append((SIGNATURE_HEADER, str(self.http_signing_secret)))
        return pairs

    def clean(self) -> None:
        from tools_app.schema import schema_errors

        errors: dict[str, str] = {}
        problem = schema_errors(self.parameters)
        if problem:
            errors["parameters"] = problem
        if self.kind == ToolKind.BUILTIN and not self.builtin_name:
            errors["builtin_name"] = "A built-in tool needs the name of a registered function."
        if self.kind == ToolKind.HTTP and not self.http_url:
            errors["http_url"] = "An HTTP tool needs a URL."
        for field in ("http_headers", "http_secret_headers"):
            value = getattr(self, field)
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                errors[field] = "Must be an object of header name → text."
        for field in ("http_headers", "http_secret_headers"):
            value = getattr(self, field)
            reserved = [h for h in value if str(h).lower() in RESERVED_HEADER_NAMES] if isinstance(value, dict) else []
            if reserved:
                errors[field] = (
                    f"{', '.join(reserved)} is set by the platform on every call (the idempotency key and the "
                    "identity it asserts); a tool cannot send its own."
                )
        if isinstance(self.http_headers, dict) and "http_headers" not in errors:
            secret_like = [h for h in self.http_headers if str(h).lower() in SECRET_HEADER_NAMES]
            if secret_like:
                errors["http_headers"] = (
                    f"{', '.join(secret_like)} carries a secret: put it in the secret headers as the name of an "
                    "environment variable, so its value is never stored in the database."
                )
        if isinstance(self.http_secret_headers, dict):
            for env_name in self.http_secret_headers.values():
                if not tool_secret_name_allowed(str(env_name)):
                    errors["http_secret_headers"] = (
                        f"{env_name!r} is not allowed: a secret header names an environment variable that starts "
                        f"with {TOOL_SECRET_PREFIX} (e.g. {TOOL_SECRET_PREFIX}CRM_TOKEN), set on the agent workers."
                    )
        if errors:
            raise ValidationError(errors)


class InvocationStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # A crashed process left the row running past its lease and the tool is not
    # idempotent: the outcome is unknown, so it is never re-run automatically.
    INDETERMINATE = "indeterminate", "Indeterminate (crashed mid-call)"


class ToolInvocation(models.Model):
    """One row of the idempotency ledger: unique on (scope, key)."""

    scope = models.CharField(max_length=80, help_text="The session id for agent calls.")
    key = models.CharField(max_length=255)
    session = models.ForeignKey(
        "sessions_app.VoiceSession", null=True, blank=True, on_delete=models.SET_NULL, related_name="tool_invocations"
    )
    tool = models.ForeignKey(ToolDefinition, null=True, on_delete=models.SET_NULL, related_name="invocations")
    tool_name = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the tool name and canonical arguments.")
    arguments = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=InvocationStatus.choices, default=InvocationStatus.RUNNING)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="Times the tool was started: runs of a built-in, requests of an HTTP tool."
    )
    replays = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Who owns a running row: changed on every claim and re-claim, so a process whose
    # lease was taken over cannot complete (or commit a built-in's effect for) the row.
    claim_token = models.CharField(max_length=32, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="ledger_unique_scope_key")]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.tool_name} {self.key} ({self.status})"


class DemoWallet(models.Model):
    """Demo side effect: a caller's wallet charged by the `charge_wallet` built-in tool."""

    owner = models.CharField(max_length=120, unique=True)
    balance = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("100.00"))
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.owner}: {self.balance}"


class DemoCharge(models.Model):
    wallet = models.ForeignKey(DemoWallet, on_delete=models.CASCADE, related_name="charges")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    reason = models.CharField(max_length=200, blank=True)
    # "<ledger scope>:<ledger key>": a second charge with the same key cannot exist.
    idempotency_key = models.CharField(max_length=400, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"], condition=~models.Q(idempotency_key=""), name="democharge_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.amount} from {self.wallet.owner}"


class DemoOrder(models.Model):
    """Demo side effect: an order placed by the `place_order` built-in tool."""

    customer = models.CharField(max_length=120)
    item = models.CharField(max_length=120)
    quantity = models.PositiveIntegerField(default=1)
    # "<ledger scope>:<ledger key>": a second order with the same key cannot exist.
    idempotency_key = models.CharField(max_length=400, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"], condition=~models.Q(idempotency_key=""), name="demoorder_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.item} for {self.customer}"
