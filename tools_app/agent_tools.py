"""The agent's function tools, built at job start from the admin's ToolDefinitions.

`build_agent_tools` is the seam the agent worker uses (docs/CONTRACTS.md). Each tool is a
livekit-agents raw function tool: the LLM sees the definition's name, description and
JSON Schema; a call is validated, keyed `f"{session_id}:{tool_call_id}"` (so a retried
call carries the same key) and goes through the idempotency ledger in a worker thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from livekit.agents.llm import RawFunctionTool, ToolError, function_tool

# RunContext must be importable at run time: livekit-agents resolves the tool function's
# type hints to inject it.
from livekit.agents.voice import RunContext

from tools_app.confirmation import CONFIRMATION_REQUIRED, ConfirmationGate, caller_messages, confirmation_request
from tools_app.ledger import InvocationOutcome, LedgerError, outcome_from_row, request_fingerprint
from tools_app.models import InvocationStatus, ToolDefinition
from tools_app.selectors import invocation_get, tools_for_agent
from tools_app.services import tool_invoke

logger = logging.getLogger(__name__)

OnResult = Callable[[dict[str, Any]], Any]
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
BACKGROUND_POLL_SECONDS = 0.2


def _in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn` in a pool thread (not the shared sync thread): a slow HTTP tool must not
    hold up the agent's DB writer. The thread keeps its connection within CONN_MAX_AGE."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(wrapped, thread_sensitive=False)


def tool_raw_schema(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters or dict(EMPTY_PARAMETERS),
    }


def _tool_output(outcome: InvocationOutcome) -> str:
    if outcome.status == InvocationStatus.SUCCEEDED:
        return json.dumps(outcome.result if outcome.result is not None else {}, ensure_ascii=False)
    if outcome.status == InvocationStatus.RUNNING:
        return json.dumps({"status": "running", "message": "The tool is still running; its result will be recorded."})
    raise ToolError(outcome.error or f"The tool {outcome.tool_name!r} failed.")


async def _wait_background(outcome: InvocationOutcome, *, timeout: float) -> InvocationOutcome:
    """A run_in_background tool runs on Celery; wait (without blocking) for its ledger row."""
    deadline = time.monotonic() + timeout
    read = _in_thread(invocation_get)
    while time.monotonic() < deadline:
        await asyncio.sleep(BACKGROUND_POLL_SECONDS)
        row = await read(scope=outcome.scope, key=outcome.key)
        if row is not None and row.status != InvocationStatus.RUNNING:
            return outcome_from_row(row, replayed=False)
    return outcome


def _report(on_result: OnResult | None, record: dict[str, Any]) -> None:
    if on_result is None:
        return
    try:
        on_result(record)
    except Exception:  # a reporting problem must never fail the tool call
        logger.exception("on_result callback failed for tool %s", record.get("name"))


def agent_tool_build(
    *, tool: ToolDefinition, session_id: str, on_result: OnResult | None, gate: ConfirmationGate | None = None
) -> RawFunctionTool:
    """One raw function tool for `tool`, bound to the voice session `session_id`.

    `gate` (one per job, shared by its tools) holds back tools that need the caller's yes.
    """
    invoke = _in_thread(tool_invoke)
    gate = gate or ConfirmationGate()
    wait_limit = float(tool.timeout_seconds) * (1 + int(tool.max_retries)) + 1.0

    async def call_tool(raw_arguments: dict[str, Any], context: RunContext) -> str:
        call_id = str(context.function_call.call_id)
        key = f"{session_id}:{call_id}"
        started = time.perf_counter()
        record: dict[str, Any] = {
            "name": tool.name,
            "call_id": call_id,
            "key": key,
            "status": "",
            "replayed": False,
            "latency_ms": None,
            "error": "",
        }
        if tool.requires_confirmation and not gate.allow(
            fingerprint=request_fingerprint(tool_name=tool.name, arguments=raw_arguments),
            caller_said=caller_messages(context.session.history),
        ):
            # Nothing runs and nothing enters the ledger: the model is told to ask first.
            record.update(status=CONFIRMATION_REQUIRED, latency_ms=round((time.perf_counter() - started) * 1000, 2))
            _report(on_result, record)
            return json.dumps(confirmation_request(tool_name=tool.name, arguments=raw_arguments), ensure_ascii=False)
        try:
            outcome: InvocationOutcome = await invoke(
                tool=tool,
                arguments=raw_arguments,
                key=key,
                scope=str(session_id),
                session_id=str(session_id),
                # The agent's own recorder appends `tool.called` from on_result (batched,
                # off the hot path); the ledger does not append it a second time.
                emit_event=False,
            )
            if outcome.status == InvocationStatus.RUNNING and not outcome.replayed:
                outcome = await _wait_background(outcome, timeout=wait_limit)
        except LedgerError as exc:
            record.update(status="rejected", error=f"{exc.code}: {exc.message}")
            record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
            _report(on_result, record)
            raise ToolError(exc.message) from exc
        except Exception as exc:
            logger.exception("tool %s failed in the ledger", tool.name)
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
            _report(on_result, record)
            raise ToolError(f"The tool {tool.name!r} is not available right now.") from exc
        record.update(status=outcome.status, replayed=outcome.replayed, error=outcome.error)
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
        _report(on_result, record)
        return _tool_output(outcome)

    call_tool.__name__ = tool.name
    return function_tool(call_tool, raw_schema=tool_raw_schema(tool))


async def build_agent_tools(*, agent_id: int, session_id: str, on_result: OnResult | None) -> list[RawFunctionTool]:
    """The enabled ToolDefinitions of the agent as livekit-agents raw function tools.

    The definitions are read once, at job start: a call keeps one consistent tool set
    even if someone edits a tool in the admin meanwhile.
    """
    tools = await _in_thread(lambda: list(tools_for_agent(agent_id=agent_id)))()
    gate = ConfirmationGate()
    return [agent_tool_build(tool=t, session_id=str(session_id), on_result=on_result, gate=gate) for t in tools]
