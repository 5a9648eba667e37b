"""A phone caller's key presses become one entry (agents_app/runtime/worker/keypad.py)."""

from __future__ import annotations

import asyncio

from agents_app.runtime.worker.keypad import MAX_ENTRY, Keypad, keypad_text


async def test_keys_end_an_entry_with_hash_or_a_pause():
    entries: list[str] = []
    keypad = Keypad(entries.append, pause=0.05)
    for key in "42#":
        keypad.press(key)
    assert entries == ["42#"]  # at once: no waiting for the pause
    for key in "123":
        keypad.press(key)
    await asyncio.sleep(0.02)
    assert entries == ["42#"]  # still typing
    keypad.press("4")  # a key restarts the pause
    await asyncio.sleep(0.03)
    assert entries == ["42#"]
    await asyncio.sleep(0.06)
    assert entries == ["42#", "1234"]


async def test_anything_but_a_keypad_key_is_ignored_and_long_runs_are_split():
    entries: list[str] = []
    keypad = Keypad(entries.append, pause=10)
    for key in ("x", "", "12", " 7 ", "*"):
        keypad.press(key)
    keypad.flush()
    assert entries == ["7*"]
    for _ in range(MAX_ENTRY + 3):
        keypad.press("9")
    assert entries[1] == "9" * MAX_ENTRY
    keypad.close()  # the rest is dropped with the call, no late callback
    await asyncio.sleep(0)
    assert len(entries) == 2


def test_an_entry_reads_as_a_sentence_for_the_llm():
    assert keypad_text("42#") == "(The caller pressed 4 2 # on the phone keypad.)"
