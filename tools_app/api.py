"""POST /api/v1/tools/{name}/invoke: idempotent tool calls for agents outside this codebase."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import HttpRequest
from ninja import Field, Router, Schema

from sessions_app import selectors
from sessions_app.auth import ApiKeyAuth
from sessions_app.models import ApiScope
from sessions_app.ratelimit import action_rate_enforce
from sessions_app.schemas import ErrorOut
from tools_app.confirmation import CONFIRMATION_REQUIRED
from tools_app.models import TOOL_NAME_VALIDATOR
from tools_app.selectors import tool_by_name
from tools_app.services import tool_invoke
from voiceplatform.api_errors import ApiError
from voiceplatform.jsonsafe import json_problem

TOOL_NAME_RE = TOOL_NAME_VALIDATOR.regex

router = Router(tags=["tools"])
agent_key_auth = ApiKeyAuth(scopes=(ApiScope.AGENT,))


class ToolInvokeIn(Schema):
    session_id: UUID | None = Field(
        None, description="The live voice session the call belongs to, of an agent this key serves (required)."
    )
    arguments: dict[str, Any] = Field(default_factory=dict, description="Validated against the tool's JSON Schema.")


class ToolInvokeOut(Schema):
    status: str = Field(description="succeeded, failed, or running (background tools).")
    result: Any = None
    replayed: bool = Field(description="True when this is the stored outcome of an earlier call with the same key.")
    error: str = ""


@router.post(
    "/{name}/invoke",
    auth=agent_key_auth,
    response={
        200: ToolInvokeOut,
        202: ToolInvokeOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        409: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
    },
    summary="Invoke a tool, at most once per Idempotency-Key",
    description=(
        "Send the same `Idempotency-Key` header to retry safely: the same key and body return the "
        "stored outcome (`replayed: true`) without running the tool again. The same key with another "
        "body → 422 `idempotency_key_mismatch`; while the first call still runs → 409 "
        "`idempotency_key_in_use`; no key → 400 `idempotency_key_missing`. Keys are scoped to the "
        "API client and the session. An agent key acts only on live sessions of the agents it serves "
        "(404 otherwise), with the tools attached to that agent."
    ),
)
def tool_invoke_op(request: HttpRequest, name: str, payload: ToolInvokeIn) -> tuple[int, dict[str, Any]]:
    subject = f"client:{request.auth.key_prefix}"  # type: ignore[attr-defined]
    action_rate_enforce(action="tool_invoke", subject=subject, what="tool calls")
    if not TOOL_NAME_RE.fullmatch(name):  # also keeps NUL bytes away from PostgreSQL
        raise ApiError(404, "tool_not_found", "No enabled tool has that name.")
    problem = json_problem(payload.arguments)
    if problem:
        raise ApiError(422, "invalid_arguments", f"arguments {problem}.")
    key_client = request.auth  # type: ignore[attr-defined]
    if payload.session_id is None:
        raise ApiError(422, "session_required", "An agent key calls tools within a voice session: send session_id.")
    session_id = str(payload.session_id)
    # The key acts only for the agents it serves (ApiClient.agents), on their live sessions,
    # and only with the tools attached to the session's agent. Anything else is "not found":
    # a key learns nothing about other agents' sessions or tools.
    session = selectors.session_for_agent_key(session_id=session_id, api_client=key_client)
    if session is None:
        raise ApiError(404, "session_not_found", f"No voice session {session_id} for this key.")
    if not session.is_live:
        raise ApiError(409, "session_final", f"Session {session_id} is {session.state}.", {"state": session.state})
    tool = tool_by_name(name=name)
    if tool is None or not tool.agents.filter(pk=session.agent_id).exists():
        raise ApiError(404, "tool_not_found", f"No enabled tool named {name!r} serves this session's agent.")
    if tool.requires_confirmation:
        raise ApiError(
            409,
            CONFIRMATION_REQUIRED,
            f"The tool {name!r} runs only after the caller confirms it in a call with the platform's agent.",
        )
    # The ledger is per (client, session): one key never replays (learns) another's calls,
    # nor the agent worker's own (scope = the session id).
    scope = f"{session_id}:client-{key_client.pk}"
    # The ledger's refusals are domain errors: the API edge answers them (400/409/422).
    outcome = tool_invoke(
        tool=tool,
        arguments=payload.arguments,
        key=request.headers.get("Idempotency-Key"),
        scope=scope,
        session_id=session_id,
    )
    body = {"status": outcome.status, "result": outcome.result, "replayed": outcome.replayed, "error": outcome.error}
    return (202 if outcome.status == "running" else 200), body
