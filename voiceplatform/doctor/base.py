"""What a doctor check returns: a `Check` (ok, warn or fail, what it saw, what to do)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from voiceplatform.logging import redact

OK, WARN, FAIL = "ok", "warn", "fail"
HTTP_TIMEOUT_S = 5.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        # What a check saw can carry a credential (a Redis URL's password, a driver's error
        # text): it goes through the same redaction as every log line.
        self.detail = redact(self.detail)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)
