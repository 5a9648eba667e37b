"""Who speaks when: an agent's turn-taking settings as livekit-agents options.

- **End of turn** (`Agent.turn_detection`): `smart_turn` hands livekit-agents a streaming
  turn detector (agents_app/runtime/providers/smart_turn.py) and a VAD that ends speech
  after SMART_TURN_VAD_SILENCE_SECONDS (0.35 s); the model then decides whether the caller has
  finished, and a caller it thinks is mid-sentence gets the eagerness' `max_delay` to go
  on. `vad`: the fixed silence of VAD_MIN_SILENCE_SECONDS ends the turn.
- **Barge-in** (`Agent.barge_in_min_speech_ms`): speech over the agent that lasts this
  long pauses it on the sound alone (livekit's `min_duration`); shorter speech interrupts
  once its words are recognised (livekit interrupts on every non-empty final transcript).
- **Backchannels** (`Agent.ignore_backchannels`): a final transcript made only of
  acknowledgements, heard while the agent is speaking, is dropped before livekit sees it
  (`PlatformAgent.stt_node`): it neither interrupts nor becomes a turn, and is recorded as
  a `caller.backchannel` event instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from agents_app.models import Agent

# Acknowledgement tokens, as the offline STTs write them ("Mm-hmm" comes out of Moonshine
# as "Mm-hmm", "Mhm" or a run of "M"s). "no", "stop", "wait", questions: not here.
BACKCHANNEL_TOKENS = frozenset(
    """
    m mm mmm hm hmm mhm mmhm mmhmm hmhm uh huh uhhuh uhuh ah aha oh um
    yeah yea yes yep yup ya ok okay kay right alright sure cool great
    i see got it gotcha true totally exactly
    """.split()
)
# At most this many tokens: a longer run of acknowledgements is somebody taking the floor.
BACKCHANNEL_MAX_TOKENS = 4
_TOKEN = re.compile(r"[a-z]+")


def is_backchannel(text: str) -> bool:
    """True for a short utterance made only of acknowledgements ("Mm-hmm.", "Yeah, okay.",
    "I see"), never for anything with other words ("okay, stop", "yes but").

    A question mark at the end makes it a question ("Right?"), not an acknowledgement
    (Moonshine sometimes writes a stray "?" in front of a line: that one does not count)."""
    if text.rstrip().endswith("?"):
        return False
    tokens = _TOKEN.findall(text.lower().replace("-", ""))
    return 0 < len(tokens) <= BACKCHANNEL_MAX_TOKENS and all(t in BACKCHANNEL_TOKENS for t in tokens)


def vad_silence(agent: Agent | None) -> float:
    """The silence (s) after which the VAD ends the caller's speech for this agent."""
    if agent is not None and agent.turn_detection == "smart_turn":
        return settings.SMART_TURN_VAD_SILENCE_SECONDS
    return settings.VAD_MIN_SILENCE_SECONDS


def turn_handling(agent: Agent | None, *, allow_interruptions: bool = True) -> dict[str, Any]:
    """livekit-agents' `turn_handling` for this agent (without an agent: VAD end of turn and
    livekit's barge-in defaults, as before these settings existed)."""
    endpointing: dict[str, Any] = {"min_delay": settings.ENDPOINTING_MIN_DELAY_SECONDS}
    interruption: dict[str, Any] = {"enabled": allow_interruptions, "mode": "vad"}
    detection: Any = "vad"
    if agent is not None:
        interruption["min_duration"] = agent.barge_in_min_speech_ms / 1000
        if agent.turn_detection == "smart_turn":
            from agents_app.runtime.providers.smart_turn import SmartTurnDetector

            detection = SmartTurnDetector(eagerness=agent.turn_eagerness)
            endpointing["max_delay"] = detection.max_delay
    return {
        "turn_detection": detection,
        "interruption": interruption,
        # What the caller waits after the VAD's end of speech before the turn is
        # committed, and whether TTS starts on a preemptive reply (docs/latency.md).
        "endpointing": endpointing,
        "preemptive_generation": {"preemptive_tts": settings.PREEMPTIVE_TTS},
    }
