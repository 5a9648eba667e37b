"""OfflineStandInLLM: a deterministic stand-in for a real LLM, for demos and tests only.

It is NOT a language model. It streams a reply assembled from the prompt and the
caller's words so the whole voice pipeline (streaming, tool calls, interruptions,
context) runs with no hosted AI:

- It names the company found in the system instructions ("... of Acme ..."), so a
  published prompt edit visibly changes the next calls.
- It calls a tool when the caller mentions its name ("place order") or two keywords of
  its description, with arguments filled from the schema and the caller's words.
- After a tool result it reports the result. When a tool answers that the caller must
  confirm first, it asks ("Shall I place order with item coffee and quantity 2?"), and a
  yes as the caller's next message makes it call the tool again with the same arguments.
- Asked to "explain" or "tell me everything" it gives a long answer (something to
  interrupt in barge-in tests).
- A supervisor's note (support staff's whisper, agents_app/runtime/supervisor.py) given
  since it last spoke is relayed at the end of its next reply ("My colleague reminds me:
  …"): it follows no instructions, so this is how a whisper's effect shows.

The factory never chooses it when a real LLM provider is configured.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from typing import Any

from livekit.agents import APIConnectOptions, llm, utils
from livekit.agents.llm import ChatContext, ChatMessage, FunctionCall, FunctionCallOutput
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from agents_app.runtime.supervisor import note_text
from tools_app.confirmation import CONFIRMATION_REQUIRED, caller_said_yes

_COMPANY_RE = re.compile(r"\b(?:of|at|for|from|with)\s+((?:[A-Z][\w&'-]*)(?:\s+[A-Z][\w&'-]*)*)")
_LONG_RE = re.compile(r"\b(explain|everything|in detail|all about|tell me more|long)\b", re.I)
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_STOP = frozenset(
    "the a an and or of to for in on with from by this that is are be it as at your you our their "
    "use when tool call calls called returns return".split()
)


def company_from_instructions(instructions: str) -> str:
    match = _COMPANY_RE.search(instructions or "")
    return match.group(1) if match else "our company"


def _tool_meta(tool: Any) -> tuple[str, str, dict[str, Any]] | None:
    info = getattr(tool, "info", None)
    if info is None:
        return None
    raw = getattr(info, "raw_schema", None)
    if isinstance(raw, dict):
        return raw.get("name") or info.name, raw.get("description", ""), raw.get("parameters") or {}
    name = getattr(info, "name", "")
    description = getattr(info, "description", "") or ""
    try:
        schema = llm.utils.build_legacy_openai_schema(tool, internally_tagged=True).get("parameters", {})
    except Exception:
        schema = {}
    return name, description, schema


def _mentions(text: str, name: str, description: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    name_words = {w for w in re.split(r"[_\W]+", name.lower()) if w}
    if name_words and name_words <= words:  # "place an order" mentions place_order
        return True
    keywords = {w for w in re.findall(r"[a-z]+", description.lower()) if len(w) > 3 and w not in _STOP}
    return len(keywords & words) >= 2


def _first_number(text: str) -> int | None:
    for token in re.findall(r"[a-z]+|\d+", text.lower()):
        if token.isdigit():
            return int(token)
        if token in _NUMBER_WORDS:
            return _NUMBER_WORDS[token]
    return None


def _arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    props = schema.get("properties") or {}
    required = schema.get("required") or list(props)
    args: dict[str, Any] = {}
    for key in required:
        spec = props.get(key) or {}
        kind = spec.get("type")
        if "enum" in spec and spec["enum"]:
            args[key] = spec["enum"][0]
        elif kind == "integer":
            args[key] = _first_number(text) or 1
        elif kind == "number":
            args[key] = float(_first_number(text) or 1)
        elif kind == "boolean":
            args[key] = True
        elif kind == "array":
            args[key] = [text] if (spec.get("items") or {}).get("type") == "string" else []
        elif kind == "object":
            args[key] = {}
        else:
            args[key] = text[:200] or key
    return args


def _confirmation_question(output: FunctionCallOutput, items: list[Any]) -> str:
    call = next((i for i in items if isinstance(i, FunctionCall) and i.call_id == output.call_id), None)
    try:
        arguments = json.loads(call.arguments) if call is not None else {}
    except ValueError:
        arguments = {}
    described = " and ".join(f"{key} {value}" for key, value in arguments.items())
    return f"Shall I {output.name.replace('_', ' ')}{' with ' + described if described else ''}? Please say yes or no."


def _confirmed_call(items: list[Any]) -> FunctionCall | None:
    """The caller said yes right after the agent asked about a call: make that call again."""
    if len(items) < 2 or not isinstance(items[-1], ChatMessage) or items[-1].role != "user":
        return None
    if not caller_said_yes(items[-1].text_content or ""):
        return None
    for index in range(len(items) - 2, -1, -1):
        item = items[index]
        if isinstance(item, ChatMessage) and item.role == "user":
            return None  # the caller spoke in between: that yes answered something else
        if isinstance(item, FunctionCallOutput) and CONFIRMATION_REQUIRED in str(item.output or ""):
            asked = next((i for i in items if isinstance(i, FunctionCall) and i.call_id == item.call_id), None)
            if asked is None:
                return None
            return FunctionCall(call_id=f"call_{utils.shortuuid()}", name=asked.name, arguments=asked.arguments)
    return None


def _pending_note(items: list[Any]) -> str | None:
    """Support staff's note given since the agent last spoke (agents_app/runtime/supervisor.py)."""
    for item in reversed(items):
        if isinstance(item, ChatMessage) and item.role == "assistant":
            return None
        if isinstance(item, ChatMessage) and item.role in ("system", "developer"):
            note = note_text(item.text_content or "")
            if note is not None:
                return note
    return None


class OfflineStandInLLM(llm.LLM):
    """Deterministic offline stand-in for an LLM (see the module docstring)."""

    def __init__(self, *, token_delay: float = 0.0, history: int = 50) -> None:
        super().__init__()
        self._token_delay = token_delay
        # The chat contexts of recent requests, newest last: tests check what the model saw.
        self.requests: deque[ChatContext] = deque(maxlen=history)

    @property
    def model(self) -> str:
        return "offline-stand-in"

    @property
    def provider(self) -> str:
        return "offline"

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests.append(chat_ctx.copy())
        return _OfflineStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    def reply_for(self, chat_ctx: ChatContext, tools: list[llm.Tool]) -> tuple[str, FunctionCall | None]:
        """The reply text, or a tool call to make, for this context."""
        instructions = ""
        last_user = ""
        items = list(chat_ctx.items)
        for item in items:
            if isinstance(item, ChatMessage) and item.role in ("system", "developer") and not instructions:
                instructions = item.text_content or ""
        company = company_from_instructions(instructions)
        for item in reversed(items):
            if isinstance(item, ChatMessage) and item.role == "user":
                last_user = (item.text_content or "").strip()
                break
        last = items[-1] if items else None
        if isinstance(last, FunctionCallOutput) and CONFIRMATION_REQUIRED in str(last.output or ""):
            return _confirmation_question(last, items), None
        if isinstance(last, FunctionCallOutput):
            outcome = "could not be completed" if last.is_error else "is done"
            detail = str(last.output or "").strip()
            return f"Your {last.name.replace('_', ' ')} {outcome}. {detail[:160]}".strip(), None

        confirmed = _confirmed_call(items)
        if confirmed is not None:
            return "", confirmed
        if last_user:
            for tool in tools:
                meta = _tool_meta(tool)
                if meta is None:
                    continue
                name, description, schema = meta
                if _mentions(last_user, name, description):
                    call = FunctionCall(
                        call_id=f"call_{utils.shortuuid()}",
                        name=name,
                        arguments=json.dumps(_arguments(schema, last_user)),
                    )
                    return "", call

        reply, call = self._reply(company, last_user, items, tools)
        note = _pending_note(items)
        if note and call is None and reply:
            # A real LLM follows a supervisor's note; the stand-in relays it (visible in tests).
            reply = f"{reply} My colleague reminds me: {note}"
        return reply, call

    def _reply(
        self, company: str, last_user: str, items: list[Any], tools: list[llm.Tool]
    ) -> tuple[str, FunctionCall | None]:
        if not last_user:
            return f"Hello, this is {company}. How can I help?", None
        if _LONG_RE.search(last_user):
            topic = re.sub(r"^.*?\b(about|explain)\b\s*", "", last_user, flags=re.I) or "that"
            sentences = [
                f"Here at {company} I can tell you a lot about {topic}.",
                "First, every request is handled by our team in the order it arrives.",
                "Second, you can follow its progress at any time by asking me.",
                "Third, changes are possible until the request has been confirmed.",
                "Fourth, confirmations are sent as soon as the work is finished.",
                "Fifth, if anything goes wrong we will contact you straight away.",
                "Finally, our support line is open every day of the week.",
            ]
            return " ".join(sentences), None
        return f"Thanks for calling {company}. You said: {last_user}. How else can I help?", None


class _OfflineStream(llm.LLMStream):
    def __init__(
        self, llm_: OfflineStandInLLM, *, chat_ctx: ChatContext, tools: list[llm.Tool], conn_options: APIConnectOptions
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._stand_in = llm_

    async def _run(self) -> None:
        request_id = utils.shortuuid("offline_")
        text, call = self._stand_in.reply_for(self._chat_ctx, list(self._tools))
        if call is not None:
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    delta=llm.ChoiceDelta(
                        role="assistant",
                        tool_calls=[
                            llm.FunctionToolCall(name=call.name, arguments=call.arguments, call_id=call.call_id)
                        ],
                    ),
                )
            )
            return
        # Stream word by word, like a real model's tokens.
        for token in re.findall(r"\S+\s*", text):
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=token))
            )
            await asyncio.sleep(self._stand_in._token_delay)
