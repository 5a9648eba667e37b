"""The idempotency ledger: replay, mismatch, missing key, in-use, and the crash/lease rule."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app.metrics import TOOL_CALLS
from sessions_app.models import SessionEvent
from tests.tools_app.helpers import SimulatedCrash
from tools_app import builtins
from tools_app.ledger import (
    IdempotencyKeyInUse,
    IdempotencyKeyMismatch,
    IdempotencyKeyMissing,
    InvocationIndeterminate,
    request_fingerprint,
)
from tools_app.models import DemoCharge, DemoOrder, DemoWallet, InvocationStatus, ToolInvocation
from tools_app.services import tool_invoke
from voiceplatform.api_errors import http_status

ORDER = {"item": "latte", "quantity": 2}


def invoke(tool, key: str | None, arguments=None, session=None):
    return tool_invoke(
        tool=tool,
        arguments=dict(ORDER) if arguments is None else arguments,
        key=key,
        scope=str(session.pk) if session else "test",
        session_id=str(session.pk) if session else None,
    )


def counter(tool: str, status: str, replayed: str) -> float:
    return TOOL_CALLS.labels(tool=tool, status=status, replayed=replayed)._value.get()


@pytest.mark.django_db
class TestReplay:
    def test_the_same_key_and_request_returns_the_stored_outcome_without_running_again(self, place_order_tool) -> None:
        first = invoke(place_order_tool, "k1")
        second = invoke(place_order_tool, "k1")
        assert first.status == second.status == InvocationStatus.SUCCEEDED
        assert (first.replayed, second.replayed) == (False, True)
        assert second.result == first.result
        assert DemoOrder.objects.count() == 1
        row = ToolInvocation.objects.get(key="k1")
        assert (row.replays, row.attempts) == (1, 1)
        assert row.latency_ms is not None and row.completed_at is not None

    def test_the_fingerprint_ignores_key_order_but_not_values(self) -> None:
        a = request_fingerprint(tool_name="t", arguments={"a": 1, "b": [1, 2]})
        assert a == request_fingerprint(tool_name="t", arguments={"b": [1, 2], "a": 1})
        assert a != request_fingerprint(tool_name="t", arguments={"a": 2, "b": [1, 2]})
        assert a != request_fingerprint(tool_name="u", arguments={"a": 1, "b": [1, 2]})

    def test_the_same_key_with_other_arguments_is_a_mismatch(self, place_order_tool) -> None:
        invoke(place_order_tool, "k1")
        with pytest.raises(IdempotencyKeyMismatch) as err:
            invoke(place_order_tool, "k1", {"item": "mocha", "quantity": 2})
        assert http_status(err.value) == 422 and err.value.code == "idempotency_key_mismatch"
        assert DemoOrder.objects.count() == 1

    def test_the_same_key_for_another_tool_is_a_mismatch(self, place_order_tool, charge_wallet_tool) -> None:
        invoke(place_order_tool, "k1")
        with pytest.raises(IdempotencyKeyMismatch):
            invoke(charge_wallet_tool, "k1", {"amount": 5, "reason": "x"})
        assert not DemoCharge.objects.exists()

    @pytest.mark.parametrize("key", [None, "", "   "])
    def test_a_missing_key_is_refused_before_anything_runs(self, place_order_tool, key) -> None:
        with pytest.raises(IdempotencyKeyMissing) as err:
            invoke(place_order_tool, key)
        assert http_status(err.value) == 400
        assert not ToolInvocation.objects.exists() and not DemoOrder.objects.exists()

    def test_keys_are_scoped(self, place_order_tool, agent) -> None:
        from tests.tools_app.conftest import make_session

        one, two = make_session(agent, "a"), make_session(agent, "b")
        invoke(place_order_tool, "same", session=one)
        outcome = invoke(place_order_tool, "same", session=two)
        assert outcome.replayed is False
        assert sorted(DemoOrder.objects.values_list("customer", flat=True)) == sorted([one.caller_key, two.caller_key])

    def test_a_failed_outcome_is_stored_and_replayed(self, charge_wallet_tool) -> None:
        first = invoke(charge_wallet_tool, "k", {"amount": 400, "reason": "too much"})
        DemoWallet.objects.update(balance=1000)
        second = invoke(charge_wallet_tool, "k", {"amount": 400, "reason": "too much"})
        assert first.status == second.status == InvocationStatus.FAILED
        assert "Not enough money" in second.error and second.replayed
        assert not DemoCharge.objects.exists()

    def test_invalid_arguments_are_recorded_as_failed_and_nothing_runs(self, place_order_tool) -> None:
        outcome = invoke(place_order_tool, "k", {"item": "latte"})
        assert outcome.status == InvocationStatus.FAILED
        assert "'quantity' is a required property" in outcome.error
        assert ToolInvocation.objects.get(key="k").status == InvocationStatus.FAILED
        assert not DemoOrder.objects.exists()

    def test_a_running_key_with_a_live_lease_is_in_use(self, place_order_tool) -> None:
        ToolInvocation.objects.create(
            scope="test",
            key="busy",
            tool=place_order_tool,
            tool_name="place_order",
            fingerprint=request_fingerprint(tool_name="place_order", arguments=ORDER),
            arguments=ORDER,
            attempts=1,
            claim_token="other",
            lease_expires_at=timezone.now() + timedelta(seconds=60),
        )
        with pytest.raises(IdempotencyKeyInUse) as err:
            invoke(place_order_tool, "busy")
        assert http_status(err.value) == 409
        assert not DemoOrder.objects.exists()

    def test_it_counts_the_call_and_appends_a_session_event(self, place_order_tool, voice_session) -> None:
        before = counter("place_order", "succeeded", "true")
        invoke(place_order_tool, "k", session=voice_session)
        invoke(place_order_tool, "k", session=voice_session)
        assert counter("place_order", "succeeded", "true") == before + 1
        events = list(SessionEvent.objects.filter(session=voice_session, type="tool.called").order_by("seq"))
        assert [(e.payload["name"], e.payload["replayed"]) for e in events] == [
            ("place_order", False),
            ("place_order", True),
        ]
        assert DemoOrder.objects.get().customer == voice_session.caller_key


def crashing(real):
    def fn(ctx, arguments):
        real(ctx, arguments)  # the side effect is written…
        raise SimulatedCrash  # …and the process dies before the ledger completes

    return fn


def expire_leases() -> None:
    ToolInvocation.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db(transaction=True)
class TestCrash:
    def test_a_crash_mid_builtin_leaves_no_effect_and_the_retry_runs_it_exactly_once(
        self, place_order_tool, monkeypatch
    ) -> None:
        real = builtins.builtin_get("place_order")
        monkeypatch.setitem(builtins._REGISTRY, "place_order", builtins.Builtin("place_order", crashing(real.fn), True))
        with pytest.raises(SimulatedCrash):
            invoke(place_order_tool, "k")
        # The effect and the ledger row were one transaction: neither survived the crash.
        assert not DemoOrder.objects.exists()
        assert not ToolInvocation.objects.exists()
        monkeypatch.setitem(builtins._REGISTRY, "place_order", real)
        retried = invoke(place_order_tool, "k")
        again = invoke(place_order_tool, "k")
        assert retried.status == InvocationStatus.SUCCEEDED and not retried.replayed
        assert again.replayed and again.result == retried.result
        assert DemoOrder.objects.count() == 1

    def test_a_crash_of_a_non_atomic_builtin_after_its_effect_is_never_rerun(self, agent, monkeypatch) -> None:
        """A built-in with effects outside our DB: after a crash its row stays running; past
        the lease it becomes indeterminate instead of running a second time."""
        from tests.tools_app.conftest import make_demo_tool

        effects: list[str] = []

        def external(ctx, arguments):
            effects.append(ctx.key)  # e.g. an e-mail sent: cannot be rolled back
            raise SimulatedCrash

        monkeypatch.setitem(builtins._REGISTRY, "send_mail", builtins.Builtin("send_mail", external, atomic=False))
        tool = make_demo_tool("place_order", None, name="send_mail", builtin_name="send_mail")
        with pytest.raises(SimulatedCrash):
            invoke(tool, "k")
        assert ToolInvocation.objects.get(key="k").status == InvocationStatus.RUNNING
        with pytest.raises(IdempotencyKeyInUse):  # lease still live: the owner may be alive
            invoke(tool, "k")
        expire_leases()
        with pytest.raises(InvocationIndeterminate):
            invoke(tool, "k")
        assert effects == ["k"]
        assert ToolInvocation.objects.get(key="k").status == InvocationStatus.INDETERMINATE

    def test_an_atomic_builtin_left_running_by_a_dead_worker_is_rerun_after_the_lease(self, place_order_tool) -> None:
        """E.g. a background call whose Celery worker died: its effect rolled back with it."""
        ToolInvocation.objects.create(
            scope="test",
            key="k",
            tool=place_order_tool,
            tool_name="place_order",
            fingerprint=request_fingerprint(tool_name="place_order", arguments=ORDER),
            arguments=ORDER,
            attempts=1,
            claim_token="dead-worker",
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        outcome = invoke(place_order_tool, "k")
        assert outcome.status == InvocationStatus.SUCCEEDED and not outcome.replayed
        assert DemoOrder.objects.count() == 1 and ToolInvocation.objects.get().attempts == 2

    def test_a_retry_racing_the_first_call_waits_and_replays_instead_of_running_again(
        self, place_order_tool, monkeypatch
    ) -> None:
        """The retry arrives while the first call is inside the built-in (uncommitted)."""
        from django.db import connection

        if connection.vendor != "postgresql":
            pytest.skip("needs row locks between two connections: PostgreSQL only (CI runs on PostgreSQL)")
        real = builtins.builtin_get("place_order")
        inside, results = threading.Event(), {}

        def retry_from_another_process() -> None:
            inside.wait(10)
            try:
                results["retry"] = invoke(place_order_tool, "k")
            finally:
                connection.close()

        def slow(ctx, arguments):
            effect = real.fn(ctx, arguments)
            if not inside.is_set():
                inside.set()
                time.sleep(0.5)  # ordering only: give the retry time to reach the lock
            return effect

        monkeypatch.setitem(builtins._REGISTRY, "place_order", builtins.Builtin("place_order", slow, True))
        other = threading.Thread(target=retry_from_another_process)
        other.start()
        first = invoke(place_order_tool, "k")
        other.join(20)
        assert first.status == InvocationStatus.SUCCEEDED and not first.replayed
        assert results["retry"].replayed and results["retry"].result == first.result
        assert DemoOrder.objects.count() == 1

    def test_a_non_idempotent_http_tool_left_running_becomes_indeterminate_and_never_reruns(self, agent) -> None:
        from tools_app.models import ToolDefinition

        tool = ToolDefinition.objects.create(
            name="pay", description="pay", kind="http", http_url="http://127.0.0.1:9/pay", idempotent=False
        )
        ToolInvocation.objects.create(
            scope="test",
            key="k",
            tool=tool,
            tool_name="pay",
            fingerprint=request_fingerprint(tool_name="pay", arguments={}),
            arguments={},
            attempts=1,
            claim_token="dead-process",
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        for _ in range(2):
            with pytest.raises(InvocationIndeterminate) as err:
                tool_invoke(tool=tool, arguments={}, key="k", scope="test")
            assert http_status(err.value) == 409 and "outcome is unknown" in err.value.message
        row = ToolInvocation.objects.get(key="k")
        assert row.status == InvocationStatus.INDETERMINATE and row.attempts == 1


@pytest.mark.django_db(transaction=True)
class TestCallsLeftRunningByADeadOwner:
    """The beat sweep (`tool_invocations_resolve_expired`) settles rows nobody retries: an
    agent job killed mid-call leaves its row running, and its key is never sent again."""

    def _left_running(self, tool, key: str, *, expired: bool) -> ToolInvocation:
        return ToolInvocation.objects.create(
            scope="session-x",
            key=key,
            tool=tool,
            tool_name=tool.name,
            fingerprint=request_fingerprint(tool_name=tool.name, arguments=ORDER),
            arguments=ORDER,
            attempts=1,
            claim_token="dead-job",
            lease_expires_at=timezone.now() + timedelta(seconds=-1 if expired else 60),
        )

    def test_the_sweep_applies_the_lease_rule_and_never_runs_a_call_twice(self, agent, monkeypatch) -> None:
        from tests.tools_app.conftest import make_demo_tool
        from tools_app.tasks import tool_invocations_resolve_expired

        effects: list[str] = []

        def external(ctx, arguments):
            effects.append(ctx.key)
            return {"sent": True}

        monkeypatch.setitem(builtins._REGISTRY, "send_mail", builtins.Builtin("send_mail", external, atomic=False))
        mail = make_demo_tool("place_order", None, name="send_mail", builtin_name="send_mail")
        order = make_demo_tool("place_order", None)
        self._left_running(mail, "mail-dead", expired=True)  # effect may have happened
        self._left_running(order, "order-dead", expired=True)  # atomic: rolled back with the crash
        self._left_running(order, "order-alive", expired=False)  # its owner may still be working

        outcomes = tool_invocations_resolve_expired()

        assert outcomes == {InvocationStatus.INDETERMINATE: 1, InvocationStatus.SUCCEEDED: 1}
        status = dict(ToolInvocation.objects.values_list("key", "status"))
        assert status == {
            "mail-dead": InvocationStatus.INDETERMINATE,
            "order-dead": InvocationStatus.SUCCEEDED,
            "order-alive": InvocationStatus.RUNNING,
        }
        assert effects == [] and DemoOrder.objects.count() == 1
        # A second sweep finds nothing more to do.
        assert tool_invocations_resolve_expired() == {}
        assert DemoOrder.objects.count() == 1
