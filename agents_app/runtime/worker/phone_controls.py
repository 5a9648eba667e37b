"""A phone call's controls for the telephony built-ins: DTMF out and transfer (SIP REFER).

The job serving a phone call registers one `PhoneCallControls` for its session
(tools_app/call_controls.py). The built-ins call it from the ledger's pool thread; the
work runs on the job's event loop (the room and the LiveKit API client live there), and
the thread waits for it, so the ledger row completes only when the keys were sent or the
transfer was accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from livekit import api, rtc

# RFC 4733 event codes of the keypad.
DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
DIGIT_GAP_SECONDS = 0.25
# A transfer dials the person: LiveKit's SIP service waits for their phone to ring and
# answer (its ringing timeout) before it reports the REFER's outcome.
TRANSFER_TIMEOUT_SECONDS = 90.0


def transfer_uri(target: str) -> str:
    """What LiveKit's SIP service puts in the REFER: `tel:` for a number, a SIP URI as it is."""
    return f"tel:{target}" if target.startswith("+") else target


class PhoneCallControls:
    def __init__(
        self, *, loop: asyncio.AbstractEventLoop, room: rtc.Room, lkapi: api.LiveKitAPI, caller_identity: str
    ) -> None:
        self._loop = loop
        self._room = room
        self._api = lkapi
        self._caller = caller_identity
        # Set while a transfer is asked for and after it went through: the caller leaving
        # the room then is the transfer, not a hang-up.
        self.transferring = False

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:  # waiting here would block the very loop that does the work
            raise RuntimeError("call controls are used from a tool's thread, never on the job's loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def send_digits(self, digits: str) -> None:
        self._run(self._send_digits(digits), timeout=5.0 + len(digits) * (DIGIT_GAP_SECONDS + 1.0))

    async def _send_digits(self, digits: str) -> None:
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(DIGIT_GAP_SECONDS)
            await self._room.local_participant.publish_dtmf(code=DTMF_CODES[digit], digit=digit)

    def transfer(self, transfer_to: str) -> None:
        self.transferring = True
        try:
            self._run(self._transfer(transfer_to), timeout=TRANSFER_TIMEOUT_SECONDS + 5.0)
        except BaseException:
            self.transferring = False
            raise

    async def _transfer(self, transfer_to: str) -> None:
        await self._api.sip.transfer_sip_participant(
            api.TransferSIPParticipantRequest(
                room_name=self._room.name,
                participant_identity=self._caller,
                transfer_to=transfer_uri(transfer_to),
                play_dialtone=False,
            ),
            timeout=TRANSFER_TIMEOUT_SECONDS,
        )
