"""Shared by the phone tests: livekit-api's SIP client replaced by a recorder."""

from __future__ import annotations

from typing import Any

import pytest

from sessions_app import livekit_server


class FakeSip:
    """What the platform asked the SIP service for; `fail` makes the next call refused."""

    def __init__(self) -> None:
        self.applied: list[livekit_server.SipLineSpec] = []
        self.removed: list[tuple[str, str]] = []
        self.listed: tuple[list[Any], list[Any]] = ([], [])
        self.fail = ""
        self.count = 0

    def apply(self, spec: livekit_server.SipLineSpec) -> livekit_server.SipLineIds:
        if self.fail:
            raise livekit_server.LiveKitServerError(self.fail)
        self.applied.append(spec)
        self.count += 1
        outbound = (spec.outbound_trunk_id or f"ST_OUT_{self.count}") if spec.outbound_address else ""
        return livekit_server.SipLineIds(
            spec.trunk_id or f"ST_{self.count}", spec.rule_id or f"SDR_{self.count}", outbound
        )

    def remove(self, *, trunk_id: str, rule_id: str, outbound_trunk_id: str = "") -> None:
        if self.fail:
            raise livekit_server.LiveKitServerError(self.fail)
        self.removed.append((trunk_id, rule_id) + ((outbound_trunk_id,) if outbound_trunk_id else ()))

    def list(self) -> tuple[list[Any], list[Any]]:
        return self.listed


@pytest.fixture
def sip(monkeypatch) -> FakeSip:
    fake = FakeSip()
    monkeypatch.setattr(livekit_server, "sip_line_apply", fake.apply)
    monkeypatch.setattr(livekit_server, "sip_line_remove", fake.remove)
    monkeypatch.setattr(livekit_server, "sip_lines_list", fake.list)
    return fake
