"""Admin forms for agents and prompt versions, with errors a non-engineer can act on."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from agents_app.models import STAGE_KEYS, Agent, PhoneLine, PromptVersion, Provider
from agents_app.provider_config import stage_provider_error, validate_fallbacks

VARIABLES_HELP = (
    'Default values for the {{placeholders}}, as JSON, for example {"company": "Acme", "hours": "9 to 5"}. '
    "Leave {} if the prompt has no placeholders."
)

PROVIDER_HELP = (
    "Offline runs on this server with no account (a stand-in for demos and tests). "
    "OpenAI needs OPENAI_API_KEY on the server (or OPENAI_BASE_URL for a compatible server). "
    "Local (language model only) is a small real model served by this machine's llama.cpp "
    "server (manage.py runllm)."
)


def _normalize_newlines(text: str) -> str:
    return (text or "").replace("\r\n", "\n").replace("\r", "\n")


class FriendlyJSONField(forms.JSONField):
    """A JSONField whose parse error says what is expected instead of 'Enter a valid JSON'."""

    def __init__(self, *, example: str, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)
        self.error_messages["invalid"] = (
            f"This is not valid JSON. Use double quotes around names and texts, for example {example}"
        )


class AgentAdminForm(forms.ModelForm):
    stt_phrases = FriendlyJSONField(
        example='["place an order", "charge my wallet"]',
        help_text="Optional list of phrases callers are expected to say, as JSON, e.g. "
        '["place an order", "charge my wallet"]. Used by the offline PocketSphinx model (Model '
        '"pocketsphinx"), which then understands only these phrases. Leave [] to recognise any speech.',
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )
    stt_fallbacks = FriendlyJSONField(
        example='[{"provider": "offline"}]',
        help_text="Providers to try, in order, when speech recognition fails. JSON list, e.g. "
        '[{"provider": "openai", "model": "whisper-1"}, {"provider": "offline"}]. Leave [] for none.',
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )
    llm_fallbacks = FriendlyJSONField(
        example='[{"provider": "offline"}]',
        help_text="Language models to try, in order, when the main one fails. JSON list of "
        '{"provider": …, "model": …, "endpoint": …} (an endpoint the operator configured; '
        "a URL is never typed here). Leave [] for none.",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )
    tts_fallbacks = FriendlyJSONField(
        example='[{"provider": "offline"}]',
        help_text="Voices to try, in order, when speech synthesis fails. JSON list, e.g. "
        '[{"provider": "offline"}]. Leave [] for none.',
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )

    class Meta:
        model = Agent
        fields = (
            "name", "slug", "description", "active",
            "stt_provider", "stt_model", "language", "stt_phrases", "stt_fallbacks",
            "llm_provider", "llm_model", "llm_fallbacks",
            "tts_provider", "tts_model", "tts_voice", "tts_fallbacks",
            "allow_interruptions", "turn_detection", "turn_eagerness", "ignore_backchannels",
            "barge_in_min_speech_ms",
            *(f"budget_{key}_ms" for key in STAGE_KEYS),
        )  # fmt: skip
        labels = {
            "slug": "Slug (short id)",
            "active": "Active (accepts new calls)",
            "stt_provider": "Provider",
            "stt_model": "Model",
            "stt_phrases": "Expected phrases",
            "stt_fallbacks": "Fallbacks",
            "llm_provider": "Provider",
            "llm_model": "Model",
            "llm_fallbacks": "Fallbacks",
            "tts_provider": "Provider",
            "tts_model": "Model",
            "tts_voice": "Voice",
            "tts_fallbacks": "Fallbacks",
            "allow_interruptions": "Callers may interrupt the agent",
            "turn_detection": "End of the caller's turn",
            "turn_eagerness": "How eagerly the agent answers",
            "ignore_backchannels": 'Let the caller say "mm-hmm" without interrupting',
        }
        help_texts = {
            "stt_provider": PROVIDER_HELP,
            "llm_provider": PROVIDER_HELP,
            "tts_provider": PROVIDER_HELP,
            "stt_model": "Blank uses the provider default. Offline: blank is Moonshine tiny-en (English, "
            'understands any speech); "pocketsphinx" is PocketSphinx, which follows the phrase grammar '
            'from "Expected phrases" when it is set. OpenAI: a transcription model, e.g. whisper-1.',
            "language": "Language code of the calls, e.g. en.",
            "allow_interruptions": "When on, the agent stops talking as soon as the caller speaks.",
        }
        error_messages = {
            "slug": {"unique": "Another agent already uses this slug. Pick a different one; nothing was saved."},
        }

    def clean_stt_phrases(self) -> list[str]:
        value = self.cleaned_data.get("stt_phrases")
        if value in (None, ""):
            return []
        if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
            raise forms.ValidationError('Phrases must be a JSON list of texts, e.g. ["place an order"].')
        return [p.strip() for p in value]

    def _clean_fallbacks(self, field: str) -> list[dict[str, Any]]:
        value = self.cleaned_data.get(field)
        if value in (None, ""):
            return []
        if not isinstance(value, list):
            raise forms.ValidationError('Fallbacks must be a JSON list, e.g. [{"provider": "offline"}].')
        for position, entry in enumerate(value, start=1):
            if not isinstance(entry, dict) or "provider" not in entry:
                raise forms.ValidationError(f'Entry {position} needs a "provider", e.g. {{"provider": "offline"}}.')
            if entry["provider"] not in Provider.values:
                allowed = ", ".join(Provider.values)
                raise forms.ValidationError(
                    f"Entry {position}: unknown provider {entry['provider']!r}; use one of {allowed}."
                )
            for key in ("model", "endpoint"):
                if key in entry and not isinstance(entry[key], str):
                    raise forms.ValidationError(f'Entry {position}: "{key}" must be a text.')
        try:
            return validate_fallbacks(value, stage=field.split("_")[0])
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc

    def _clean_provider(self, stage: str) -> str:
        provider = self.cleaned_data.get(f"{stage}_provider") or ""
        error = stage_provider_error(stage, provider)
        if error:
            raise forms.ValidationError(error)
        return provider

    def clean_stt_provider(self) -> str:
        return self._clean_provider("stt")

    def clean_tts_provider(self) -> str:
        return self._clean_provider("tts")

    def clean_stt_fallbacks(self) -> list[dict[str, Any]]:
        return self._clean_fallbacks("stt_fallbacks")

    def clean_llm_fallbacks(self) -> list[dict[str, Any]]:
        return self._clean_fallbacks("llm_fallbacks")

    def clean_tts_fallbacks(self) -> list[dict[str, Any]]:
        return self._clean_fallbacks("tts_fallbacks")


class PromptVersionAdminForm(forms.ModelForm):
    """Add or edit a draft. Published and archived versions never reach this form's save."""

    variables = FriendlyJSONField(
        example='{"company": "Acme"}',
        help_text=VARIABLES_HELP,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
    )

    class Meta:
        model = PromptVersion
        fields = ("agent", "instructions", "greeting", "variables", "change_note")
        widgets = {
            "instructions": forms.Textarea(attrs={"rows": 14, "cols": 100}),
            "greeting": forms.Textarea(attrs={"rows": 3, "cols": 100}),
            "change_note": forms.TextInput(attrs={"size": 80}),
        }
        help_texts = {
            "change_note": "A short note for your colleagues: what changed and why.",
        }

    # Browsers submit textareas with CRLF line endings; prompts are stored with plain LF
    # so that versions typed in the admin and created in code compare line by line.
    def clean_instructions(self) -> str:
        return _normalize_newlines(self.cleaned_data.get("instructions", ""))

    def clean_greeting(self) -> str:
        return _normalize_newlines(self.cleaned_data.get("greeting", ""))

    def clean_variables(self) -> dict[str, Any]:
        value = self.cleaned_data.get("variables")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError('Variables must be a JSON object of name → value, e.g. {"company": "Acme"}.')
        for name, item in value.items():
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise forms.ValidationError(f'The value of "{name}" must be a text or a number.')
        return value


class PromptPreviewForm(forms.Form):
    """One text field per {{placeholder}} of a version, pre-filled with its default value."""

    def __init__(self, *args: Any, version: PromptVersion, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = version.variables or {}
        for name in version.placeholders():
            self.fields[name] = forms.CharField(
                label=name,
                required=False,
                initial=str(defaults.get(name, "")),
                help_text=(
                    f"Default: {defaults[name]}. Leave empty to use it."
                    if name in defaults
                    else "No default value: calls must supply it."
                ),
                widget=forms.TextInput(attrs={"size": 60}),
            )

    def values(self) -> dict[str, str]:
        """The sample values to render with; empty fields fall back to the defaults."""
        if not self.is_bound or not self.is_valid():
            return {}
        return {name: value for name, value in self.cleaned_data.items() if value != ""}


class RollbackForm(forms.Form):
    change_note = forms.CharField(
        required=False,
        max_length=300,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="Why you are rolling back (optional). Saved with the new version.",
    )


def _write_only_password(label: str, what: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=f"{what} It is never shown again; leave empty to keep the current one.",
    )


class PhoneLineAdminForm(forms.ModelForm):
    """A phone line: allowed addresses one per line, and a password that is never shown."""

    allowed_addresses = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 40}),
        help_text="One IP address or network (CIDR) per line: your carrier's or PBX's signalling addresses, "
        "e.g. 203.0.113.10 or 198.51.100.0/24. Calls from anywhere else are refused. Networks wider than /16 "
        "are refused: a phone line is never open to the world.",
    )
    auth_password = _write_only_password(
        "Digest password",
        "With a digest username: the password your carrier or PBX authenticates with (12+ characters).",
    )
    clear_auth = forms.BooleanField(
        label="Remove digest credentials", required=False, help_text="Callers then need an allowed address only."
    )
    outbound_password = _write_only_password(
        "Outbound digest password",
        "With an outbound digest username: the password your carrier gave you for placing calls.",
    )
    clear_outbound_auth = forms.BooleanField(label="Remove outbound digest credentials", required=False)

    # (username field, password field, checkbox that clears both): passwords are write-only.
    SECRETS = (
        ("auth_username", "auth_password", "clear_auth"),
        ("outbound_username", "outbound_password", "clear_outbound_auth"),
    )

    class Meta:
        model = PhoneLine
        fields = (
            "number",
            "agent",
            "active",
            "allowed_addresses",
            "auth_username",
            "auth_password",
            "transfer_to",
            "outbound_address",
            "outbound_username",
            "outbound_password",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["allowed_addresses"] = "\n".join(self.instance.allowed_addresses or [])
        for _, password, clear in self.SECRETS:
            self.initial[password] = ""
            if not getattr(self.instance, password):
                self.fields.pop(clear)

    def clean_allowed_addresses(self) -> list[str]:
        text = _normalize_newlines(self.cleaned_data.get("allowed_addresses") or "")
        return [line.strip() for line in text.split("\n") if line.strip()]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for username, password, clear in self.SECRETS:
            if data.get(clear):
                data[username] = data[password] = ""
            elif not data.get(username):
                data[password] = ""
            elif not data.get(password):
                data[password] = getattr(self.instance, password)  # kept: it is never sent back to the page
            # Also on the instance: a field left out of the POST is not copied to it when the
            # model field has a default (ModelForm's construct_instance).
            setattr(self.instance, username, data.get(username, ""))
            setattr(self.instance, password, data[password])
        return data
