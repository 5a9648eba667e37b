"""Handing freed heap memory back to the OS in the long-running local agent host.

glibc keeps memory that a thread freed in that thread's malloc arena for reuse; a host that
serves call after call on several threads (the recorder's writer, the TTS and VAD worker
threads) then keeps the high-water of every arena resident. `trim_heap()` asks glibc to
return the free pages (`malloc_trim(0)`). When a call ends the host calls
`release_call_memory()`, off the event loop: the offline TTS's onnxruntime arena is shrunk
(providers/piper.py `release_memory`), then the heap trimmed. A no-op where the C library is
not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl, macOS: nothing to trim this way
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS; True when glibc released any."""
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        return bool(trim(0))
    except Exception:  # never let housekeeping fail a call
        logger.debug("malloc_trim failed", exc_info=True)
        return False


def release_call_memory() -> None:
    """What a finished call leaves behind: Piper's unused arena regions (when the offline
    TTS is loaded in this process), then the C heap's free pages."""
    piper = sys.modules.get("agents_app.runtime.providers.piper")
    if piper is not None:
        try:
            piper.release_memory()
        except Exception:  # never let housekeeping fail a call
            logger.debug("releasing Piper's arena failed", exc_info=True)
    trim_heap()
