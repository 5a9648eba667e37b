"""A scriptable SIP phone for tests and benchmarks (pjsua2): not a part of the product.

The livekit tier calls LiveKit's SIP service with it (a caller dials
`sip:<number>@<sip-host>:5060`, hears the agent, speaks a WAV file and records what it
hears; DTMF; the platform calling a phone; a REFER). Nothing in the platform imports this
module, and `pjsua2-python` comes from requirements-dev.txt only.

    with SipPhone(bind="10.0.0.2", user="caller") as phone:
        call = phone.call("sip:+15550100@10.0.0.1:5060")
        call.start_recording(tmp / "heard.wav")    # may start before the answer
        call.expect_confirmed(timeout=10)          # SipPhoneError with the SIP status if not
        call.play("question.wav"); call.wait_played(timeout=10)
        call.hangup(); call.wait_disconnected(timeout=5)
        samples, rate = call.received_audio()

How pjsua2 is driven (it is easy to crash from Python, so this is strict):

- pjsua2 allows one `Endpoint` per process. It lives on one daemon thread of this module
  ("sip-phone-pjsua2"), created on first use. That thread created the library (so it is
  pjlib's registered main thread), polls it (`libHandleEvents`, 10 ms: SIP and RTP share
  its ioqueue, as both worker-thread counts are 0) and runs every pjsua2 call. Public
  methods, from any Python thread (asyncio's `to_thread` pool included), hand a closure to
  that thread and wait for its result, so no other Python thread ever needs
  `libRegisterThread`, and callbacks (call state, media, DTMF, REFER, incoming calls)
  run on that thread without the caller's help.
- Every SWIG object that owns a pjsua2 resource (endpoint, accounts, calls, players,
  recorders) is referenced only from that thread's registry and dropped there: a SWIG
  destructor run by the garbage collector on another thread would call pjlib from an
  unregistered thread, which aborts the process. `PhoneCall` and `SipPhone` hold plain
  Python state only.
- pjlib runs one more native thread, the conference bridge's clock (the null sound device
  drives the bridge every 20 ms: players, recorders and RTP encoding). The only Python it
  reaches is the player's end-of-file callback (`onEof2`, which only flips a flag; SWIG's
  directors take the GIL).
- The endpoint outlives its phones: closing the last phone leaves it running, because
  destroying and re-creating a pjsua2 Endpoint in one process is fragile (global pjlib
  state, SWIG directors). An `atexit` hook hangs up what is left and destroys the library
  on its own thread; after that no phone can be created in this process.

Audio: the null sound device (no sound card), no echo canceller, no VAD. The conference
bridge runs at `CLOCK_RATE` (16 kHz), so recordings are 16 kHz mono 16-bit WAV files;
codecs are PCMU, then PCMA, then G722 (all others disabled), so a call carries telephone
audio (8 kHz, G.711) unless the far end only takes G722. A player or recorder is wired to
the call's conference port (`Call.getAudioMedia(-1)`): `player.startTransmit(call_audio)`
and `call_audio.startTransmit(recorder)`, as soon as the call's media is active (early
media included), so both may be set up before the call is answered. Destroying a recorder
only queues its removal from the bridge (pjmedia 2.14+), whose clock thread then closes the
WAV: `stop_recording` waits for the file to be complete.

Limits of the pjsua2-python 2.15.1.post1 wheel (compile-time): 4 calls at once per process
(PJSUA_MAX_CALLS; two phones of one process calling each other use 2), 8 phones at once
(transports, accounts; closing a phone frees its slots). A call hung up before any response
(nobody listens on that UDP port) ends at once for us with 487, but pjsip keeps its INVITE
transaction, and so its call slot, until Timer B (32 s); left alone it ends with 408.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import logging
import os
import queue
import re
import sys
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pjsua2 as pj

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOCK_RATE = 16000
DEFAULT_CODECS = ("PCMU/8000", "PCMA/8000", "G722/16000")
_POLL_MS = 10
# Asked for, but pjsua clamps it to its compile-time PJSUA_MAX_CALLS, which is 4 in the
# pjsua2-python 2.15.1.post1 wheel: 4 calls at once per process, both ends counted when
# two phones of one process call each other. Likewise at most 8 phones (transports and
# accounts) at once; closing a phone frees its slots.
_MAX_CALLS = 32
_WHEEL_MAX_CALLS = 4
_PJ_ETOOMANY = 70010
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
_STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}
# Compact header forms (RFC 3261 §7.3.3), expanded in `remote_headers`.
_COMPACT_HEADERS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "r": "refer-to",
    "b": "referred-by",
}
_REQUEST_URI = re.compile(r"^\S+\s+sips?:(?:[^@\s;>]*@)?(\[[^\]]+\]|[^:;\s>?]+)(?::(\d+))?", re.IGNORECASE)


class SipPhoneError(RuntimeError):
    """A SIP phone operation failed (the message carries the SIP status when there is one)."""


@dataclass
class _Settings:
    log_path: str | None = None
    log_level: int = 1
    clock_rate: int = CLOCK_RATE
    codecs: tuple[str, ...] = DEFAULT_CODECS


_settings = _Settings()
_engine_lock = threading.Lock()
_engine: _Engine | None = None


def configure(
    *,
    log_path: str | os.PathLike[str] | None = None,
    log_level: int = 1,
    clock_rate: int = CLOCK_RATE,
    codecs: tuple[str, ...] = DEFAULT_CODECS,
) -> None:
    """Endpoint-wide settings; call before the first `SipPhone` of the process (the same
    settings again later are accepted; different ones raise SipPhoneError).

    `log_path`: pjsua2's log file (default: stderr); `log_level`: 1 errors only … 5 SIP
    messages and more. `codecs`: in order of preference, e.g. ("PCMA/8000",); every other
    codec is disabled. `clock_rate`: the conference bridge's rate, hence the recordings'.
    """
    global _settings
    wanted = _Settings(
        log_path=os.fspath(log_path) if log_path is not None else None,
        log_level=log_level,
        clock_rate=clock_rate,
        codecs=tuple(codecs),
    )
    with _engine_lock:
        if _engine is not None:
            if wanted == _settings:
                return  # asked again for what runs (two test modules of one process)
            raise SipPhoneError("configure() must come before the first SipPhone: the pjsua2 endpoint is running")
        _settings = wanted


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            engine = _Engine(_settings)
            engine.start()
            _engine = engine
            atexit.register(engine.stop)
        if _engine.stopped:
            raise SipPhoneError("the pjsua2 endpoint of this process was shut down; it cannot be re-created")
        return _engine


def _pj_error(what: str, err: pj.Error) -> SipPhoneError:
    return SipPhoneError(f"{what}: {err.reason} (pjsua2 status {err.status})")


def _parse_headers(message: str) -> dict[str, str]:
    head = re.split(r"\r?\n\r?\n", message, maxsplit=1)[0]
    lines: list[str] = []
    for line in head.splitlines()[1:]:
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()  # folded continuation line
        else:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _COMPACT_HEADERS.get(key, key)
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _quietly(fn: Callable[[], T]) -> T:
    """Run `fn` with fd 1 on /dev/null: pjlib logs its start-up (before any log settings
    apply) to stdout, where a benchmark prints its one JSON object."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1: nothing to protect
        return fn()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        return fn()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _wait_wav_closed(path: Path, timeout: float = 2.0) -> None:
    """Wait until a recorder's WAV is complete. Destroying a recorder only queues its
    removal from the conference bridge (pjmedia 2.14+); the bridge's clock thread then
    closes the file, which rewrites the RIFF sizes: done when they match the file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(12)
            if size >= 44 and head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size:
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise SipPhoneError(f"the recording {path} was not closed within {timeout} s")
        time.sleep(0.01)


def _uri_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --------------------------------------------------------------------------- state
# Plain Python state shared between the pjsua2 thread (writer) and callers (readers).


@dataclass(eq=False)
class _CallState:
    key: int
    phone: _PhoneCore
    direction: str  # "outgoing" | "incoming"
    remote_uri: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    state: str = "NULL"
    last_status_code: int | None = None
    last_reason: str = ""
    call_id: str = ""
    remote_headers: dict[str, str] = field(default_factory=dict)
    media_active: bool = False
    disconnected: bool = False
    answered: bool = False
    codec: str | None = None
    dtmf: list[str] = field(default_factory=list)
    transfer_targets: list[str] = field(default_factory=list)
    transfer_call: PhoneCall | None = None
    transfer_status: list[tuple[int, str]] = field(default_factory=list)
    plays_started: int = 0
    plays_done: int = 0
    recording_path: Path | None = None
    last_recording: Path | None = None

    def update(self, **changes: Any) -> None:
        with self.cond:
            for name, value in changes.items():
                setattr(self, name, value)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout)


@dataclass(eq=False)
class _PhoneCore:
    address: str
    port: int = 0
    user: str = "phone"
    acc_id: int = -1
    transport_id: int = -1
    auto_answer: bool = False
    reject_with: int | None = None
    follow_transfers: bool = True
    closed: bool = False
    incoming: queue.Queue[PhoneCall] = field(default_factory=queue.Queue)


# --------------------------------------------------------------------------- pjsua2 side
# Director subclasses: their callbacks run on the pjsua2 thread (the player's EOF on the
# bridge clock's). An exception escaping a director aborts the process, hence the guards.


class _Endpoint(pj.Endpoint):
    def __init__(self, engine: _Engine) -> None:
        super().__init__()
        self.engine = engine

    def onSelectAccount(self, prm: pj.OnSelectAccountParam) -> None:
        # pjsua picks the account of an incoming request by the request URI's user and
        # host, ignoring the port, so two phones on one address would steal each other's
        # calls: pick the phone whose transport port the request URI names.
        try:
            match = _REQUEST_URI.match(prm.rdata.wholeMsg)
            if not match:
                return
            host, port = match.group(1).strip("[]"), int(match.group(2) or 5060)
            on_port = [core for core in self.engine.phones.values() if core.port == port]
            found = [core for core in on_port if core.address == host] or on_port
            if len(found) == 1:
                prm.accountIndex = found[0].acc_id
        except Exception:
            log.exception("sip phone: selecting the account of an incoming request")


class _Account(pj.Account):
    def __init__(self, engine: _Engine, core: _PhoneCore) -> None:
        super().__init__()
        self.engine = engine
        self.core = core

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self.engine.on_incoming_call(self, prm)
        except Exception:
            log.exception("sip phone: incoming call")


class _Call(pj.Call):
    def __init__(self, engine: _Engine, account: _Account, state: _CallState, call_id: int | None = None) -> None:
        if call_id is None:
            super().__init__(account)
        else:
            super().__init__(account, call_id)
        self.engine = engine
        self.account = account  # keeps the account alive as long as the call
        self.st = state

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            self.engine.on_call_state(self, prm)
        except Exception:
            log.exception("sip phone: call state")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            self.engine.on_call_media_state(self)
        except Exception:
            log.exception("sip phone: call media state")

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        try:
            with self.st.cond:
                self.st.dtmf.append(prm.digit)
                self.st.cond.notify_all()
        except Exception:
            log.exception("sip phone: DTMF digit")

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        try:
            self.engine.on_transfer_request(self, prm)
        except Exception:
            log.exception("sip phone: REFER")
            prm.statusCode = 500

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        try:
            with self.st.cond:
                self.st.transfer_status.append((int(prm.statusCode), prm.reason))
                self.st.cond.notify_all()
            prm.cont = True
        except Exception:
            log.exception("sip phone: transfer status")


class _Player(pj.AudioMediaPlayer):
    def __init__(self, state: _CallState) -> None:
        super().__init__()
        self.st = state
        self.connected = False
        self.done = False

    def onEof2(self) -> None:
        # On the bridge's clock thread: flag only (destroying the player here is not allowed).
        try:
            if not self.done:
                self.done = True
                with self.st.cond:
                    self.st.plays_done += 1
                    self.st.cond.notify_all()
        except Exception:
            log.exception("sip phone: end of playback")


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.media = pj.AudioMediaRecorder()
        self.media.createRecorder(str(path))
        self.connected = False


class _Engine:
    """The pjsua2 endpoint and the one thread that touches it (see the module docstring)."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.stopped = False
        self._stopping = False
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any] | None]]
        self._jobs = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="sip-phone-pjsua2", daemon=True)
        self._keys = itertools.count(1)
        # Touched on the pjsua2 thread only.
        self.ep: _Endpoint | None = None
        self.phones: dict[int, _PhoneCore] = {}  # account id → phone
        self.accounts: dict[int, _Account] = {}
        self.calls: dict[int, _Call] = {}  # call key → call
        self.players: dict[int, _Player] = {}
        self.recorders: dict[int, _Recorder] = {}
        self.finished_players: list[_Player] = []

    # ---- thread plumbing

    def start(self) -> None:
        self._thread.start()
        try:
            self._ready.result(timeout=15)
        except concurrent.futures.TimeoutError as exc:
            raise SipPhoneError("the pjsua2 endpoint did not start within 15 s") from exc
        except pj.Error as err:
            raise _pj_error("starting the pjsua2 endpoint", err) from err

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the pjsua2 thread and return its result (or raise its exception)."""
        if self.on_thread():
            return fn()
        if self.stopped or self._stopping:
            raise SipPhoneError("the pjsua2 endpoint of this process was shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise SipPhoneError(f"the pjsua2 thread did not answer within {timeout} s") from exc

    def post(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the pjsua2 thread later (from a callback: not inside pjsua's locks)."""
        self._jobs.put((fn, None))

    def _main(self) -> None:
        try:
            self._create_endpoint()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        assert self.ep is not None
        while not self._stopping:
            self._drain()
            self.ep.libHandleEvents(_POLL_MS)
            if self.finished_players or any(player.done for player in self.players.values()):
                self._reap_players()
        self._destroy()
        self._drain()  # fail what was queued meanwhile rather than leave it waiting

    def _drain(self) -> None:
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            if self.stopped:
                if future is not None:
                    future.set_exception(SipPhoneError("the pjsua2 endpoint of this process was shut down"))
                continue
            try:
                result = fn()
            except BaseException as exc:
                if future is None:
                    log.exception("sip phone: background job")
                elif isinstance(exc, pj.Error):
                    future.set_exception(_pj_error(exc.title or "pjsua2", exc))
                else:
                    future.set_exception(exc)
            else:
                if future is not None:
                    future.set_result(result)

    def _create_endpoint(self) -> None:
        ep = _Endpoint(self)
        _quietly(ep.libCreate)
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0  # polled by this thread: callbacks land here
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = _MAX_CALLS
        cfg.uaConfig.userAgent = f"voice-platform test phone (pjsua2 {pj.__version__})"
        cfg.medConfig.threadCnt = 0  # RTP shares the SIP ioqueue, polled here too
        cfg.medConfig.clockRate = self.settings.clock_rate
        cfg.medConfig.sndClockRate = self.settings.clock_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.ecTailLen = 0  # record exactly what the far end sends
        cfg.medConfig.noVad = True  # steady RTP, no silence suppression
        cfg.medConfig.quality = 6  # resampler/codec quality: modest CPU
        cfg.logConfig.level = self.settings.log_level
        cfg.logConfig.consoleLevel = 0  # pjlib's console writer is stdout; use the file writer
        log_path = self.settings.log_path or ("/dev/stderr" if os.path.exists("/dev/stderr") else "")
        cfg.logConfig.filename = log_path
        cfg.logConfig.fileFlags = pj.PJ_O_APPEND
        cfg.logConfig.msgLogging = self.settings.log_level >= 4
        ep.libInit(cfg)
        ep.audDevManager().setNullDev()
        wanted = {name.upper(): index for index, name in enumerate(self.settings.codecs)}
        for codec in ep.codecEnum2():
            name = codec.codecId.upper()
            index = next((i for prefix, i in wanted.items() if name.startswith(prefix)), None)
            ep.codecSetPriority(codec.codecId, 0 if index is None else 250 - index)
        ep.libStart()
        self.ep = ep

    def stop(self, timeout: float = 5.0) -> None:
        """Hang up, destroy the library on its thread, end the thread (at exit)."""
        if self.stopped or not self._thread.is_alive():
            return

        def request() -> None:
            self._stopping = True

        self._jobs.put((request, None))
        self._thread.join(timeout)

    def _destroy(self) -> None:
        ep = self.ep
        assert ep is not None
        try:
            if self.calls:
                ep.hangupAllCalls()
                # Let the BYEs' answers (or a retransmission) through before the network goes.
                deadline = time.monotonic() + 0.2
                while time.monotonic() < deadline:
                    ep.libHandleEvents(_POLL_MS)
            for key in list(self.calls):
                self.release_call(key)
            self._reap_players()
            for acc_id in list(self.accounts):
                self._close_account(acc_id)
            ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)  # calls are over: skip its 1 s wait
        except Exception:
            log.exception("sip phone: destroying the pjsua2 endpoint")
        finally:
            self.stopped = True
            self.ep = None  # the Endpoint's destructor runs here, on this thread
            del ep

    # ---- phones (pjsua2 thread)

    def open_phone(
        self, core: _PhoneCore, *, display: str | None, username: str | None, password: str | None, realm: str
    ) -> None:
        assert self.ep is not None
        tcfg = pj.TransportConfig()
        tcfg.boundAddress = core.address
        tcfg.publicAddress = core.address
        tcfg.port = core.port
        try:
            core.transport_id = self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        except pj.Error as err:
            raise _pj_error(f"binding a SIP UDP transport to {core.address}:{core.port}", err) from err
        try:
            local = self.ep.transportGetInfo(core.transport_id).localName
            core.port = int(local.rsplit(":", 1)[1])
            acfg = pj.AccountConfig()
            name = f'"{display}" ' if display else ""
            acfg.idUri = f"{name}<sip:{core.user}@{_uri_host(core.address)}:{core.port}>"
            acfg.regConfig.registrarUri = ""  # no registrar: direct calls only
            acfg.sipConfig.transportId = core.transport_id
            acfg.natConfig.sipOutboundUse = 0
            acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE  # no session-timer re-INVITEs
            acfg.mediaConfig.transportConfig.boundAddress = core.address
            acfg.mediaConfig.transportConfig.publicAddress = core.address
            acfg.mediaConfig.transportConfig.port = 0
            if username is not None:
                acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", realm, username, 0, password or ""))
            account = _Account(self, core)
            account.create(acfg, False)
        except pj.Error as err:
            self.ep.transportClose(core.transport_id)
            raise _pj_error("creating the SIP account", err) from err
        core.acc_id = account.getId()
        self.accounts[core.acc_id] = account
        self.phones[core.acc_id] = core

    def calls_of(self, core: _PhoneCore) -> list[_CallState]:
        return [c.st for c in self.calls.values() if c.st.phone is core]

    def hangup_phone_calls(self, core: _PhoneCore) -> list[_CallState]:
        states = self.calls_of(core)
        for st in states:
            self.hangup(st.key, None)
        return states

    def close_phone(self, core: _PhoneCore) -> None:
        for st in self.calls_of(core):
            self.release_call(st.key)
        self._close_account(core.acc_id)

    def _close_account(self, acc_id: int) -> None:
        assert self.ep is not None
        core = self.phones.pop(acc_id, None)
        account = self.accounts.pop(acc_id, None)
        if account is not None:
            try:
                account.shutdown()
            except pj.Error:
                log.exception("sip phone: deleting the account")
            del account
        if core is not None and core.transport_id >= 0:
            try:
                self.ep.transportClose(core.transport_id)
            except pj.Error:
                log.exception("sip phone: closing the transport")
            core.transport_id = -1

    # ---- calls (pjsua2 thread)

    def new_state(self, core: _PhoneCore, direction: str, remote_uri: str) -> _CallState:
        return _CallState(key=next(self._keys), phone=core, direction=direction, remote_uri=remote_uri)

    def make_call(self, core: _PhoneCore, uri: str, headers: dict[str, str] | None) -> _CallState:
        assert self.ep is not None
        if core.closed or core.acc_id not in self.accounts:
            raise SipPhoneError("the phone is closed")
        status = self.ep.utilVerifySipUri(uri)
        if status != 0:
            raise SipPhoneError(f"not a SIP URI: {uri!r} ({self.ep.utilStrError(status)})")
        st = self.new_state(core, "outgoing", uri)
        call = _Call(self, self.accounts[core.acc_id], st)
        prm = pj.CallOpParam(True)
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            prm.txOption.headers.append(header)
        self.calls[st.key] = call
        try:
            call.makeCall(uri, prm)
        except pj.Error as err:
            self.calls.pop(st.key, None)
            st.update(state="DISCONNECTED", disconnected=True)
            error = _pj_error(f"INVITE to {uri}", err)
            if err.status == _PJ_ETOOMANY:
                error = SipPhoneError(f"{error}: this pjsua2 build takes {_WHEEL_MAX_CALLS} calls at once per process")
            raise error from err
        return st

    def on_incoming_call(self, account: _Account, prm: pj.OnIncomingCallParam) -> None:
        core = account.core
        st = self.new_state(core, "incoming", "")
        st.remote_headers = _parse_headers(prm.rdata.wholeMsg)
        call = _Call(self, account, st, prm.callId)
        self.calls[st.key] = call
        info = call.getInfo()
        st.update(remote_uri=info.remoteUri, call_id=info.callIdString, state=_STATE_NAMES.get(info.state, "INCOMING"))
        op = pj.CallOpParam(True)
        if core.reject_with is not None:
            op.statusCode = core.reject_with
            call.answer(op)
            return
        if core.auto_answer:
            op.statusCode = 200
            st.answered = True
        else:
            op.statusCode = 180
        call.answer(op)
        core.incoming.put(PhoneCall(self, st))

    def answer(self, key: int, code: int, reason: str | None) -> None:
        call = self.live_call(key)
        op = pj.CallOpParam(True)
        op.statusCode = code
        if reason:
            op.reason = reason
        try:
            call.answer(op)
        except pj.Error as err:
            raise _pj_error(f"answering with {code}", err) from err
        if code < 300:
            call.st.update(answered=True)

    def on_call_state(self, call: _Call, prm: pj.OnCallStateParam) -> None:
        st = call.st
        info = call.getInfo()
        changes: dict[str, Any] = {
            "state": _STATE_NAMES.get(info.state, str(info.state)),
            "call_id": info.callIdString or st.call_id,
            "remote_uri": info.remoteUri or st.remote_uri,
        }
        if info.lastStatusCode:
            changes["last_status_code"] = int(info.lastStatusCode)
            changes["last_reason"] = info.lastReason
        event = prm.e
        if event.type == pj.PJSIP_EVENT_TSX_STATE and event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG:
            message = event.body.tsxState.src.rdata.wholeMsg
            if message.startswith("SIP/2.0"):
                headers = _parse_headers(message)
                if headers.get("cseq", "").upper().endswith("INVITE"):
                    changes["remote_headers"] = headers
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            changes["disconnected"] = True
            changes["media_active"] = False
            self.post(lambda: self.release_call(st.key))
        st.update(**changes)

    def on_call_media_state(self, call: _Call) -> None:
        st = call.st
        info = call.getInfo()
        active = [
            index
            for index, media in enumerate(info.media)
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
        ]
        if not active:
            st.update(media_active=False)
            return
        audio = call.getAudioMedia(-1)
        codec = st.codec
        try:
            stream = call.getStreamInfo(active[0])
            codec = f"{stream.codecName}/{stream.codecClockRate}"
        except pj.Error:
            pass
        player = self.players.get(st.key)
        if player is not None and not player.done:
            player.startTransmit(audio)
            player.connected = True
        recorder = self.recorders.get(st.key)
        if recorder is not None:
            audio.startTransmit(recorder.media)
            recorder.connected = True
        st.update(media_active=True, codec=codec)

    def on_transfer_request(self, call: _Call, prm: pj.OnCallTransferRequestParam) -> None:
        st = call.st
        with st.cond:
            st.transfer_targets.append(prm.dstUri)
            st.cond.notify_all()
        if not st.phone.follow_transfers:
            prm.statusCode = 603
            return
        # Accepting makes pjsua dial the target itself (and NOTIFY the transferor of its
        # progress); give it a Call object so that call is ours to see and control.
        new_state = self.new_state(st.phone, "outgoing", prm.dstUri)
        new_call = _Call(self, call.account, new_state)
        self.calls[new_state.key] = new_call
        prm.newCall = new_call
        st.update(transfer_call=PhoneCall(self, new_state))
        self.post(lambda: self._check_transfer_call(new_state.key))

    def _check_transfer_call(self, key: int) -> None:
        # pjsua dials the REFER's target right after the callback; if it could not (say, a
        # tel: URI), the Call object never gets a pjsua call: end it here.
        call = self.calls.get(key)
        if call is not None and call.getId() < 0 and not call.st.disconnected:
            call.st.update(state="DISCONNECTED", disconnected=True, last_reason="pjsua could not dial the target")
            self.release_call(key)

    def live_call(self, key: int) -> _Call:
        call = self.calls.get(key)
        if call is None or call.st.disconnected:
            raise SipPhoneError("the call has ended")
        return call

    def hangup(self, key: int, code: int | None) -> None:
        call = self.calls.get(key)
        if call is None or call.st.disconnected:
            return
        op = pj.CallOpParam(True)
        if code is not None:
            op.statusCode = code
        try:
            call.hangup(op)
        except pj.Error as err:
            log.debug("sip phone: hangup: %s", err.reason)

    def transfer(self, key: int, uri: str) -> None:
        call = self.live_call(key)
        try:
            call.xfer(uri, pj.CallOpParam(True))
        except pj.Error as err:
            raise _pj_error(f"REFER to {uri}", err) from err

    def send_dtmf(self, key: int, digits: str) -> str:
        call = self.live_call(key)
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        try:
            call.sendDtmf(prm)
            return "rfc2833"
        except pj.Error as err:
            log.debug("sip phone: RFC 2833 DTMF refused (%s), falling back to SIP INFO", err.reason)
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
        try:
            call.sendDtmf(prm)
        except pj.Error as err:
            raise _pj_error(f"sending DTMF {digits!r}", err) from err
        return "info"

    def play(self, key: int, path: Path) -> None:
        call = self.live_call(key)
        self._stop_player(key)
        player = _Player(call.st)
        try:
            player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
        except pj.Error as err:
            raise _pj_error(f"opening {path}", err) from err
        self.players[key] = player
        with call.st.cond:
            call.st.plays_started += 1
            call.st.cond.notify_all()
        if call.st.media_active:
            player.startTransmit(call.getAudioMedia(-1))
            player.connected = True

    def _stop_player(self, key: int) -> None:
        player = self.players.pop(key, None)
        if player is None:
            return
        if not player.done:
            player.done = True  # a replaced playback counts as finished
            with player.st.cond:
                player.st.plays_done += 1
                player.st.cond.notify_all()
        self.finished_players.append(player)
        self._reap_players()

    def _reap_players(self) -> None:
        # Players that hit EOF are kept until here (never destroyed inside onEof2).
        for key, player in list(self.players.items()):
            if player.done:
                self.players.pop(key)
                self.finished_players.append(player)
        while self.finished_players:
            player = self.finished_players.pop()
            call = self.calls.get(player.st.key)
            if player.connected and call is not None and call.st.media_active:
                try:
                    player.stopTransmit(call.getAudioMedia(-1))
                except pj.Error:
                    pass
            del player  # pjsua_player_destroy, on this thread

    def start_recording(self, key: int, path: Path) -> None:
        call = self.live_call(key)
        self.stop_recording(key)
        try:
            recorder = _Recorder(path)
        except pj.Error as err:
            raise _pj_error(f"creating the recording {path}", err) from err
        self.recorders[key] = recorder
        call.st.update(recording_path=path)
        if call.st.media_active:
            call.getAudioMedia(-1).startTransmit(recorder.media)
            recorder.connected = True

    def stop_recording(self, key: int) -> Path | None:
        recorder = self.recorders.pop(key, None)
        if recorder is None:
            return None
        call = self.calls.get(key)
        if recorder.connected and call is not None and call.st.media_active:
            try:
                call.getAudioMedia(-1).stopTransmit(recorder.media)
            except pj.Error:
                pass
        path = recorder.path
        del recorder  # the recorder's destructor writes the WAV header's sizes
        if call is not None:
            call.st.update(recording_path=None, last_recording=path)
        return path

    def release_call(self, key: int) -> None:
        """Forget an ended call: close its player and recorder, drop the pjsua2 Call."""
        call = self.calls.get(key)
        if call is None:
            return
        self.stop_recording(key)
        self._stop_player(key)
        self.calls.pop(key, None)
        del call


# --------------------------------------------------------------------------- public API


class PhoneCall:
    """One call of a `SipPhone` (outgoing, incoming, or dialled by pjsua for a REFER).

    State is read from plain Python attributes updated by the pjsua2 thread; methods that
    act on the call run on that thread. All are safe from any thread.
    """

    def __init__(self, engine: _Engine, state: _CallState) -> None:
        self._engine = engine
        self._st = state

    def __repr__(self) -> str:
        st = self._st
        return f"<PhoneCall {st.direction} {st.remote_uri} {st.state} {st.last_status_code or ''}>"

    # ---- state

    @property
    def direction(self) -> str:
        return self._st.direction

    @property
    def remote_uri(self) -> str:
        return self._st.remote_uri

    @property
    def state(self) -> str:
        """NULL, CALLING, INCOMING, EARLY, CONNECTING, CONFIRMED or DISCONNECTED."""
        return self._st.state

    @property
    def last_status_code(self) -> int | None:
        """The last SIP status of the INVITE (e.g. 180, 200; 486/480/603 if refused)."""
        return self._st.last_status_code

    @property
    def last_reason(self) -> str:
        return self._st.last_reason

    @property
    def call_id(self) -> str:
        return self._st.call_id

    @property
    def remote_headers(self) -> dict[str, str]:
        """Headers of the far end's INVITE (incoming) or last INVITE response (outgoing),
        lower-case names, repeated headers joined with ", "."""
        with self._st.cond:
            return dict(self._st.remote_headers)

    @property
    def codec(self) -> str | None:
        """The negotiated audio codec, e.g. "PCMU/8000", once media is active."""
        return self._st.codec

    @property
    def media_active(self) -> bool:
        return self._st.media_active

    @property
    def is_disconnected(self) -> bool:
        return self._st.disconnected

    @property
    def dtmf_received(self) -> list[str]:
        with self._st.cond:
            return list(self._st.dtmf)

    @property
    def transfer_targets(self) -> list[str]:
        """Refer-To URIs of the REFERs this call received."""
        with self._st.cond:
            return list(self._st.transfer_targets)

    @property
    def transfer_call(self) -> PhoneCall | None:
        """The call pjsua dialled to follow an accepted REFER (phone.follow_transfers)."""
        return self._st.transfer_call

    @property
    def transfer_status(self) -> list[tuple[int, str]]:
        """For a REFER this call sent: the (status, reason) lines the far end NOTIFYed."""
        with self._st.cond:
            return list(self._st.transfer_status)

    # ---- waiting

    def wait_confirmed(self, timeout: float = 10.0) -> bool:
        """True once the call is answered and acknowledged (200 OK + ACK) with media
        active; False on timeout or if it ended first."""
        st = self._st
        st.wait_for(lambda: st.disconnected or (st.state == "CONFIRMED" and st.media_active), timeout)
        with st.cond:
            return not st.disconnected and st.state == "CONFIRMED" and st.media_active

    def expect_confirmed(self, timeout: float = 10.0) -> None:
        """`wait_confirmed`, raising `SipPhoneError` (with the SIP status) otherwise."""
        if not self.wait_confirmed(timeout):
            st = self._st
            status = f"{st.last_status_code} {st.last_reason}".strip() if st.last_status_code else "no response"
            if st.disconnected:
                raise SipPhoneError(f"call to {st.remote_uri} ended without being confirmed: {status}")
            raise SipPhoneError(f"call to {st.remote_uri} not confirmed within {timeout} s ({st.state}, {status})")

    def wait_disconnected(self, timeout: float = 10.0) -> bool:
        return self._st.wait_for(lambda: self._st.disconnected, timeout)

    def wait_dtmf(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until `count` digits have arrived (or timeout); returns the digits so far."""
        self._st.wait_for(lambda: len(self._st.dtmf) >= count, timeout)
        return self.dtmf_received

    def wait_transfer(self, timeout: float = 10.0) -> list[str]:
        """Wait until a REFER has arrived (or timeout); returns the targets so far."""
        self._st.wait_for(lambda: bool(self._st.transfer_targets), timeout)
        return self.transfer_targets

    # ---- acting

    def answer(self, code: int = 200, reason: str | None = None, *, timeout: float = 10.0) -> None:
        """Answer an incoming call (200 by default; 180/183 for progress, ≥300 rejects)."""
        self._engine.run(lambda: self._engine.answer(self._st.key, code, reason), timeout)

    def hangup(self, code: int | None = None, *, timeout: float = 10.0) -> None:
        """BYE (CANCEL once the far end answered 1xx; a final response to an unanswered
        incoming call, 603 unless `code`). Before any response it ends the call at once
        with 487 (see the module's limits). A no-op on an ended call."""
        if self._st.disconnected:
            return
        self._engine.run(lambda: self._engine.hangup(self._st.key, code), timeout)

    def play(self, wav_path: str | os.PathLike[str], *, timeout: float = 10.0) -> float:
        """Play a mono 16-bit WAV (8 or 16 kHz) once into the call, replacing any playback
        in progress; it starts when media is active. Returns its duration in seconds."""
        path = Path(wav_path)
        try:
            with wave.open(str(path), "rb") as wav:
                channels, width, rate, frames = (
                    wav.getnchannels(),
                    wav.getsampwidth(),
                    wav.getframerate(),
                    wav.getnframes(),
                )
        except (OSError, wave.Error, EOFError) as exc:
            raise SipPhoneError(f"cannot play {path}: {exc}") from exc
        if channels != 1 or width != 2:
            raise SipPhoneError(f"cannot play {path}: need mono 16-bit PCM, got {channels} ch, {8 * width}-bit")
        self._engine.run(lambda: self._engine.play(self._st.key, path), timeout)
        return frames / rate

    def wait_played(self, timeout: float = 30.0) -> bool:
        """True once the last `play` has reached the end of its file; False on timeout or
        if the call ended first."""
        st = self._st
        st.wait_for(lambda: st.plays_done >= st.plays_started or st.disconnected, timeout)
        with st.cond:
            return st.plays_done >= st.plays_started

    def stop_playing(self, *, timeout: float = 10.0) -> None:
        self._engine.run(lambda: self._engine._stop_player(self._st.key), timeout)

    def start_recording(self, wav_path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        """Record what the far end sends into a WAV (CLOCK_RATE, mono, 16-bit), from the
        moment media is active (now if it is), replacing any recording in progress."""
        path = Path(wav_path)
        self._engine.run(lambda: self._engine.start_recording(self._st.key, path), timeout)

    def stop_recording(self, *, timeout: float = 10.0) -> Path | None:
        """Close the recording (the WAV is complete after this); returns its path. Ending
        the call closes it too."""
        if self._st.recording_path is not None:
            self._engine.run(lambda: self._engine.stop_recording(self._st.key), timeout)
        path = self._st.last_recording
        if path is not None:
            _wait_wav_closed(path)
        return path

    def heard_so_far(self) -> tuple[np.ndarray, int]:
        """What the running recording holds so far, without stopping it: the samples the
        recorder has flushed to its file (in blocks of a few kB; its WAV header gets its
        sizes only when it stops, so they are read after the standard 44-byte header)."""
        path = self._st.recording_path
        if path is None:
            return self.received_audio()
        data = path.read_bytes()[44:] if path.exists() else b""
        data = data[: len(data) // 2 * 2]
        return np.frombuffer(data, dtype=np.int16).copy(), _settings.clock_rate

    def received_audio(self) -> tuple[np.ndarray, int]:
        """The recording as (int16 samples, sample rate); closes it first if still running."""
        path = self.stop_recording()
        if path is None:
            raise SipPhoneError("nothing was recorded on this call (start_recording first)")
        with wave.open(str(path), "rb") as wav:
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return samples.copy(), rate

    def send_dtmf(self, digits: str, *, timeout: float = 10.0) -> str:
        """Send DTMF digits as RFC 2833 telephone-events (SIP INFO if the far end offered
        none). Returns the method used ("rfc2833" or "info"). Digits go out one after
        another in the background."""
        bad = set(digits) - _DTMF_DIGITS
        if not digits or bad:
            raise SipPhoneError(f"not DTMF digits: {digits!r}")
        return self._engine.run(lambda: self._engine.send_dtmf(self._st.key, digits), timeout)

    def transfer(self, uri: str, *, timeout: float = 10.0) -> None:
        """Send a REFER (blind transfer) to the far end; progress in `transfer_status`."""
        self._engine.run(lambda: self._engine.transfer(self._st.key, uri), timeout)


class SipPhone:
    """A SIP user agent on its own UDP transport, without registrar: it calls URIs directly
    and takes calls sent to `phone.uri()`.

    `auto_answer`: answer incoming calls with 200 OK at once (else they ring with 180 until
    `incoming()` takes them). `reject_with`: answer incoming calls with this final status
    (e.g. 486) instead. `follow_transfers`: accept a REFER with 202 and let pjsua dial the
    target (`call.transfer_call`); False declines it with 603. The target is recorded in
    `call.transfer_targets` either way. `username`/`password`: digest credentials offered
    when the far end challenges (realm `realm`, "*" for any).
    """

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str = "phone",
        display: str | None = None,
        username: str | None = None,
        password: str | None = None,
        realm: str = "*",
        auto_answer: bool = False,
        reject_with: int | None = None,
        follow_transfers: bool = True,
    ) -> None:
        if reject_with is not None and not 300 <= reject_with <= 699:
            raise ValueError(f"reject_with must be a final error status (300-699), not {reject_with}")
        if bind in ("0.0.0.0", "::", ""):
            raise SipPhoneError("bind a SipPhone to one address: it is its Contact and its SDP's media address")
        self._engine = _get_engine()
        self._core = _PhoneCore(
            address=bind,
            port=port,
            user=user,
            auto_answer=auto_answer,
            reject_with=reject_with,
            follow_transfers=follow_transfers,
        )
        self._engine.run(
            lambda: self._engine.open_phone(
                self._core, display=display, username=username, password=password, realm=realm
            )
        )

    def __repr__(self) -> str:
        return f"<SipPhone {self.uri()}{' closed' if self._core.closed else ''}>"

    def __enter__(self) -> SipPhone:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def port(self) -> int:
        return self._core.port

    def uri(self, user: str | None = None) -> str:
        return f"sip:{user or self._core.user}@{_uri_host(self._core.address)}:{self._core.port}"

    # Read by the pjsua2 thread on each incoming call; plain attributes are enough.
    @property
    def auto_answer(self) -> bool:
        return self._core.auto_answer

    @auto_answer.setter
    def auto_answer(self, value: bool) -> None:
        self._core.auto_answer = value

    @property
    def reject_with(self) -> int | None:
        return self._core.reject_with

    @reject_with.setter
    def reject_with(self, value: int | None) -> None:
        if value is not None and not 300 <= value <= 699:
            raise ValueError(f"reject_with must be a final error status (300-699), not {value}")
        self._core.reject_with = value

    @property
    def follow_transfers(self) -> bool:
        return self._core.follow_transfers

    @follow_transfers.setter
    def follow_transfers(self, value: bool) -> None:
        self._core.follow_transfers = value

    def call(self, uri: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0) -> PhoneCall:
        """Send an INVITE to `uri` (with extra `headers`); returns at once."""
        if self._core.closed:
            raise SipPhoneError("the phone is closed")
        state = self._engine.run(lambda: self._engine.make_call(self._core, uri, headers), timeout)
        return PhoneCall(self._engine, state)

    def incoming(self, timeout: float = 10.0, *, answer: bool = True) -> PhoneCall:
        """The next call that arrived, answered with 200 OK if it was not yet (`answer`).

        To miss none of its audio, take it unanswered (`auto_answer` off, `answer=False`),
        `start_recording`, then `call.answer()`."""
        try:
            call = self._core.incoming.get(timeout=timeout)
        except queue.Empty:
            raise SipPhoneError(f"no incoming call on {self.uri()} within {timeout} s") from None
        if answer and not call._st.answered and not call.is_disconnected:
            call.answer(200)
        return call

    def close(self, timeout: float = 2.0) -> None:
        """Hang up this phone's calls, then delete its account and close its transport.
        The shared pjsua2 endpoint stays (see the module docstring)."""
        if self._core.closed:
            return
        self._core.closed = True
        if self._engine.stopped:
            return
        states = self._engine.run(lambda: self._engine.hangup_phone_calls(self._core))
        deadline = time.monotonic() + timeout
        for st in states:
            st.wait_for(lambda st=st: st.disconnected, max(0.0, deadline - time.monotonic()))
        self._engine.run(lambda: self._engine.close_phone(self._core))
