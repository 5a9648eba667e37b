"""Network impairment for the caller's audio in the local transport (issue 11).

A LiveKit room delivers the caller's 20 ms Opus frames over a real network: they arrive
late and irregularly (jitter), and some never arrive (loss), sometimes several in a row
(bursts). The local transport has none of that, so `LocalCall(impairment=Impairment(...))`
adds it to the frames the agent receives:

- jitter: frame *i*, due at its nominal time t_i, is delivered at
  max(previous delivery, t_i + d_i) with d_i uniform in [0, jitter_ms]. Order is kept, as
  a receiver's jitter buffer keeps it, so late frames bunch up behind each other.
- loss: each frame is lost with probability `loss`; a lost frame is replaced by silence,
  as a receiver without concealment plays a gap (the timeline, and so the VAD's clock,
  stays intact).
- bursts: with probability `burst_probability` per frame a burst starts that loses the
  next `burst_frames` frames.

Deterministic: the same `seed` gives the same delays and losses for the same frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Impairment:
    jitter_ms: float = 0.0
    loss: float = 0.0
    burst_probability: float = 0.0
    burst_frames: int = 0
    seed: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.jitter_ms < 0 or not 0 <= self.loss < 1 or not 0 <= self.burst_probability < 1 or self.burst_frames < 0:
            raise ValueError("impairment: jitter_ms >= 0, 0 <= loss < 1, 0 <= burst_probability < 1, burst_frames >= 0")
        self._rng = np.random.default_rng(self.seed)
        self._last_delivery = 0.0
        self._burst_left = 0
        self.stats = {"frames": 0, "lost": 0, "burst_lost": 0, "bursts": 0, "delay_ms_total": 0.0, "delay_ms_max": 0.0}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Impairment | None:
        """From a scenario's `impairment:` mapping (None or {} means no impairment)."""
        if not config:
            return None
        known = {"jitter_ms", "loss", "burst_probability", "burst_frames", "seed"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown impairment keys: {', '.join(sorted(unknown))}")
        return cls(**{k: config[k] for k in known if k in config})

    @property
    def active(self) -> bool:
        return bool(self.jitter_ms or self.loss or (self.burst_probability and self.burst_frames))

    def plan(self, nominal: float) -> tuple[bool, float]:
        """(lost?, delivery time) for the next frame due at `nominal` (monotonic seconds)."""
        stats = self.stats
        stats["frames"] += 1
        lost = False
        if self._burst_left > 0:
            self._burst_left -= 1
            stats["burst_lost"] += 1
            lost = True
        elif self.burst_frames and self._rng.random() < self.burst_probability:
            stats["bursts"] += 1
            self._burst_left = self.burst_frames - 1
            stats["burst_lost"] += 1
            lost = True
        elif self.loss and self._rng.random() < self.loss:
            lost = True
        if lost:
            stats["lost"] += 1
        delay = float(self._rng.uniform(0.0, self.jitter_ms)) / 1000.0 if self.jitter_ms else 0.0
        deliver_at = max(self._last_delivery, nominal + delay)
        self._last_delivery = deliver_at
        late_ms = (deliver_at - nominal) * 1000.0
        stats["delay_ms_total"] += late_ms
        stats["delay_ms_max"] = max(stats["delay_ms_max"], late_ms)
        return lost, deliver_at

    async def deliver(self, data: bytes, *, due: float) -> bytes:
        """Apply the impairment to one frame's PCM due at `due`: wait, maybe silence it."""
        lost, deliver_at = self.plan(due)
        wait = deliver_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return bytes(len(data)) if lost else data

    def summary(self) -> dict[str, float]:
        frames = self.stats["frames"] or 1
        return {
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "frames": int(self.stats["frames"]),
            "lost": int(self.stats["lost"]),
            "loss_observed": round(self.stats["lost"] / frames, 4),
            "bursts": int(self.stats["bursts"]),
            "mean_delay_ms": round(self.stats["delay_ms_total"] / frames, 2),
            "max_delay_ms": round(self.stats["delay_ms_max"], 2),
        }


async def impairment_from_session(session_id: str) -> Impairment | None:
    """The impairment a session asked for in its metadata (`network_impairment`), if any.

    The simulator's scenarios set it; only the local transport applies it.
    """
    from sessions_app.models import VoiceSession

    metadata = await VoiceSession.objects.filter(pk=session_id).values_list("metadata", flat=True).afirst()
    config = metadata.get("network_impairment") if isinstance(metadata, dict) else None
    if not isinstance(config, dict):
        return None
    try:
        return Impairment.from_config(config)
    except (TypeError, ValueError):
        logger.warning("ignoring an invalid network_impairment in session %s: %r", session_id, config)
        return None
