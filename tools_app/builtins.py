"""Built-in tools: Python functions registered in code, plus the two demo tools.

A built-in receives a `BuiltinContext` and the validated arguments and returns a
JSON-serialisable dict. Raising `ToolError` is a failure the LLM (or API caller) sees.

Built-ins registered with `atomic=True` (the default) promise that all their side
effects are writes to the platform's own database. The ledger then runs them inside the
same transaction that marks the invocation complete, so a crash either leaves both the
effect and the completion or neither; that is what makes re-running them after a crash
safe (see docs/tools.md, "Crashes and leases").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import F
from livekit.agents.llm import ToolError

from tools_app.models import DemoCharge, DemoOrder, DemoWallet

BuiltinFn = Callable[["BuiltinContext", dict[str, Any]], dict[str, Any]]

DEMO_CUSTOMER = "demo-caller"


@dataclass(frozen=True)
class BuiltinContext:
    tool_name: str
    scope: str
    key: str
    session_id: str | None
    invocation_id: int | None

    @property
    def effect_key(self) -> str:
        """A globally unique key for the side effect: ledger keys are unique per scope only."""
        return f"{self.scope}:{self.key}"


@dataclass(frozen=True)
class Builtin:
    name: str
    fn: BuiltinFn
    atomic: bool


_REGISTRY: dict[str, Builtin] = {}


def register(name: str, *, atomic: bool = True) -> Callable[[BuiltinFn], BuiltinFn]:
    """Register `fn` as the built-in tool `name` (ToolDefinition.builtin_name)."""

    def deco(fn: BuiltinFn) -> BuiltinFn:
        _REGISTRY[name] = Builtin(name=name, fn=fn, atomic=atomic)
        return fn

    return deco


def builtin_get(name: str) -> Builtin | None:
    return _REGISTRY.get(name)


def builtin_names() -> list[str]:
    return sorted(_REGISTRY)


def _customer(ctx: BuiltinContext) -> str:
    """Whose orders and wallet: the session's caller, namespaced by the client (or browser
    user) that opened the session, since two clients may both have a caller "alice"."""
    from sessions_app.selectors import tool_call_identity

    identity = tool_call_identity(session_id=ctx.session_id)
    if identity:
        return identity["caller"][:120]
    return f"{ctx.scope}:{DEMO_CUSTOMER}"[:120]


@register("place_order")
def place_order(ctx: BuiltinContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Demo: create a DemoOrder row. Keyed on the idempotency key, so it exists at most once."""
    item = str(arguments.get("item", "")).strip()
    quantity = int(arguments.get("quantity", 1))
    if not item:
        raise ToolError("Say what to order: the item is empty.")
    if quantity < 1:
        raise ToolError("The quantity must be at least 1.")
    order, _ = DemoOrder.objects.get_or_create(
        idempotency_key=ctx.effect_key,
        defaults={"customer": _customer(ctx), "item": item[:120], "quantity": quantity},
    )
    return {
        "order_id": order.pk,
        "item": order.item,
        "quantity": order.quantity,
        "customer": order.customer,
        "message": f"Order {order.pk} placed: {order.quantity} × {order.item}.",
    }


@register("charge_wallet")
def charge_wallet(ctx: BuiltinContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Demo: take money from the caller's DemoWallet and record a DemoCharge, at most once per key."""
    try:
        amount = Decimal(str(arguments.get("amount"))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except ArithmeticError as exc:
        raise ToolError("The amount must be a number of euros.") from exc
    if amount <= 0:
        raise ToolError("The amount must be more than zero.")
    reason = str(arguments.get("reason", ""))[:200]
    owner = _customer(ctx)
    DemoWallet.objects.get_or_create(owner=owner)
    # Lock the wallet: two different charges at once must not both pass the balance check.
    wallet = DemoWallet.objects.select_for_update().get(owner=owner)
    existing = DemoCharge.objects.filter(idempotency_key=ctx.effect_key).first()
    if existing is None:
        if wallet.balance < amount:
            raise ToolError(f"Not enough money in the wallet: the balance is {wallet.balance} euros.")
        existing = DemoCharge.objects.create(
            wallet=wallet, amount=amount, reason=reason, idempotency_key=ctx.effect_key
        )
        DemoWallet.objects.filter(pk=wallet.pk).update(balance=F("balance") - amount)
        wallet.refresh_from_db(fields=["balance"])
    return {
        "charge_id": existing.pk,
        "amount": str(existing.amount),
        "balance": str(wallet.balance),
        "owner": owner,
        "message": f"Charged {existing.amount} euros. The balance is now {wallet.balance} euros.",
    }


# --- telephony: act on the live phone call (tools_app/call_controls.py) -----------------


def _call_controls(ctx: BuiltinContext, what: str) -> Any:
    from tools_app.call_controls import controls_for

    controls = controls_for(ctx.session_id)
    if controls is None:
        raise ToolError(f"{what} works only during a phone call, from the agent that serves it.")
    return controls


@register("send_keypad_digits", atomic=False)
def send_keypad_digits(ctx: BuiltinContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Press keys on the call (DTMF), e.g. to go through another company's phone menu."""
    from tools_app.call_controls import KEYPAD_DIGITS_RE, keypad_digits

    digits = keypad_digits(str(arguments.get("digits", "")))
    if not KEYPAD_DIGITS_RE.match(digits):
        raise ToolError("Say which keys to press: up to 32 of 0-9, * and #.")
    _call_controls(ctx, "Pressing keys").send_digits(digits)
    return {"digits": digits, "message": f"Pressed {' '.join(digits)} on the keypad."}


@register("transfer_call", atomic=False)
def transfer_call(ctx: BuiltinContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Hand the phone caller to a person: the number the phone line's editors set
    (`PhoneLine.transfer_to`), never one the model or the caller chooses.

    Not atomic: the transfer happens on the SIP service, so a crash part-way leaves the
    ledger row indeterminate and it is never made again (docs/tools.md); one session gets
    one transfer at most (`call.transfer` is recorded before it is asked for).
    """
    from sessions_app.models import mask_phone_number
    from sessions_app.selectors import session_transfer_target
    from sessions_app.services import session_event_append, session_transfer_claim

    target = session_transfer_target(session_id=ctx.session_id) if ctx.session_id else None
    if target is None:
        raise ToolError("Transfers work only during a phone call.")
    if not target:
        raise ToolError("This phone line has no transfer number: tell the caller nobody can take the call now.")
    controls = _call_controls(ctx, "A transfer")
    shown = mask_phone_number(target) if target.startswith("+") else target.split("@")[-1]
    reason = str(arguments.get("reason", ""))[:200]
    if not session_transfer_claim(session_id=ctx.session_id, payload={"to": shown, "reason": reason}):
        raise ToolError("This call has already been transferred once.")
    try:
        controls.transfer(target)
    except Exception as exc:
        session_event_append(
            session_id=ctx.session_id, type="call.transfer_failed", payload={"to": shown, "error": str(exc)[:300]}
        )
        raise ToolError("The transfer did not go through: tell the caller and carry on.") from exc
    return {"transferred_to": shown, "message": "The caller has been transferred."}
