"""run_in_background tools: queued to Celery (acks_late), still exactly one effect."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.tools_app.conftest import make_demo_tool
from tools_app.ledger import IdempotencyKeyInUse
from tools_app.models import DemoOrder, InvocationStatus, ToolInvocation
from tools_app.services import invocation_run_queued, tool_invoke
from tools_app.tasks import tool_invocation_run

ORDER = {"item": "cake", "quantity": 1}
pytestmark = pytest.mark.django_db


@pytest.fixture
def slow_tool(agent):
    return make_demo_tool("place_order", agent, run_in_background=True)


def test_the_task_is_declared_acks_late() -> None:
    assert tool_invocation_run.acks_late is True


def test_it_is_queued_after_commit_and_the_worker_completes_it(
    slow_tool, eager_celery, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        queued = tool_invoke(tool=slow_tool, arguments=ORDER, key="k", scope="s")
    assert queued.status == InvocationStatus.RUNNING and not DemoOrder.objects.exists()
    assert ToolInvocation.objects.get().attempts == 0  # claimed, not started
    with pytest.raises(IdempotencyKeyInUse):
        tool_invoke(tool=slow_tool, arguments=ORDER, key="k", scope="s")
    for callback in callbacks:
        callback()  # the enqueue; eager Celery runs the task now
    row = ToolInvocation.objects.get()
    assert row.status == InvocationStatus.SUCCEEDED and row.attempts == 1
    assert tool_invoke(tool=slow_tool, arguments=ORDER, key="k", scope="s").replayed
    assert DemoOrder.objects.count() == 1


def test_a_redelivered_task_does_not_run_the_tool_again(slow_tool, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        queued = tool_invoke(tool=slow_tool, arguments=ORDER, key="k", scope="s")
    assert invocation_run_queued(invocation_id=queued.invocation_id) == InvocationStatus.SUCCEEDED
    assert invocation_run_queued(invocation_id=queued.invocation_id) == "done"
    assert DemoOrder.objects.count() == 1


def test_a_redelivery_while_another_worker_holds_the_lease_waits(slow_tool, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        queued = tool_invoke(tool=slow_tool, arguments=ORDER, key="k", scope="s")
    # A worker started it (attempts=1) and still holds a live lease.
    ToolInvocation.objects.update(attempts=1, lease_expires_at=timezone.now() + timedelta(seconds=60))
    with pytest.raises(IdempotencyKeyInUse):
        invocation_run_queued(invocation_id=queued.invocation_id)
    # That worker died: after the lease the atomic built-in is re-run (its effect had rolled back).
    ToolInvocation.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert invocation_run_queued(invocation_id=queued.invocation_id) == InvocationStatus.SUCCEEDED
    assert DemoOrder.objects.count() == 1 and ToolInvocation.objects.get().attempts == 2


def test_the_api_answers_202_running_then_the_stored_outcome(
    slow_tool, agent_key, voice_session, django_capture_on_commit_callbacks
) -> None:
    from django.test import Client

    headers = {"Authorization": f"Bearer {agent_key}", "Idempotency-Key": "bg-1"}
    body = {"session_id": str(voice_session.pk), "arguments": ORDER}

    def post():
        return Client().post("/api/v1/tools/place_order/invoke", body, content_type="application/json", headers=headers)

    with django_capture_on_commit_callbacks(execute=False):
        queued = post()
    assert queued.status_code == 202 and queued.json()["status"] == "running"
    assert post().status_code == 409
    invocation_run_queued(invocation_id=ToolInvocation.objects.get().pk)
    done = post()
    assert done.status_code == 200 and done.json()["replayed"] is True
    assert done.json()["result"]["item"] == "cake"
