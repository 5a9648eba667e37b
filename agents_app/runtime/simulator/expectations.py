"""What a finished simulated call is checked against: the scenario's `expect` block, over
the session the platform stored (turns, interruptions, reconnects, tool calls and the
demo tools' side effects)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents_app.runtime.simulator.caller import CallResult


async def expectation_problems(
    expect: dict[str, Any], detail: dict[str, Any], result: CallResult, *, shared_db: bool
) -> list[str]:
    """Every way the stored session falls short of `expect` (empty: the call passed).
    Sets `result.side_effects` when it counts them."""
    turns = detail.get("turns") or []
    problems: list[str] = []

    def need(key: str, actual: int, what: str) -> None:
        if key in expect and actual < int(expect[key]):
            problems.append(f"expected at least {expect[key]} {what}, got {actual}")

    interrupted = [t for t in turns if t.get("interrupted")]
    tool_calls = [c for t in turns for c in t.get("tool_calls") or []] + result.tool_retries
    need("min_turns", len(turns), "stored turns")
    need("min_interrupted", len(interrupted), "interrupted turns")
    need("min_reconnects", int(detail.get("reconnect_count") or 0), "reconnects")
    need("min_agent_restarts", result.agent_restarts, "agent restarts")
    need("min_tool_calls", len(tool_calls), "tool calls")
    need("min_tool_replays", sum(1 for c in tool_calls if c.get("replayed")), "tool replays")
    source = expect.get("interrupt_source")
    if source and interrupted and not any(t.get("interrupt_source") == source for t in interrupted):
        problems.append(f"expected an interruption by {source}, got {[t.get('interrupt_source') for t in interrupted]}")
    for turn in interrupted:
        heard, generated = turn.get("heard_text") or "", turn.get("generated_text") or ""
        if not generated.startswith(heard) or len(heard) >= len(generated):
            problems.append(f"turn {turn['index']}: heard text is not a strict prefix of the generated text")
    if expect.get("greeting_once"):
        greetings = [t for t in turns if not t.get("user_text")]
        if len(greetings) > 1:
            problems.append(f"the agent greeted {len(greetings)} times; a resumed call must not greet again")
    if expect.get("one_side_effect"):
        keys = [c.get("key") for c in tool_calls if c.get("key")]
        effects = await side_effects(keys) if shared_db and keys else None
        if effects is not None:
            result.side_effects = sum(effects.values())
            doubled = {key: n for key, n in effects.items() if n != 1}
            if doubled:
                problems.append(f"expected exactly one side effect per idempotency key, found {doubled}")
    return problems


async def side_effects(keys: list[str]) -> dict[str, int]:
    """Demo-tool rows written for each idempotency key (a simulator sharing the DB only)."""
    from asgiref.sync import sync_to_async

    from tools_app.models import DemoCharge, DemoOrder

    def _count() -> dict[str, int]:
        # The demo tools key their rows by "<ledger scope>:<ledger key>", so the ledger
        # key ends the row's key.
        return {
            key: DemoOrder.objects.filter(idempotency_key__endswith=key).count()
            + DemoCharge.objects.filter(idempotency_key__endswith=key).count()
            for key in set(keys)
        }

    return await sync_to_async(_count, thread_sensitive=False)()


def turn_texts(turns: list[dict[str, Any]]) -> list[str]:
    return [f"{t.get('index')}:{(t.get('user_text') or '-')[:40]!r}" for t in turns]
