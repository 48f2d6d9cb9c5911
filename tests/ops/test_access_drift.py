"""No access after a refund, forever: the `access-drift` run compares what each tool holds
with the ledger, removes what an ended enrollment (or an unknown username) still holds,
makes a READY student's missing Prefect pool again, and reports the rest to support.

The tools are the development stand-ins behind the ops stack's switchable adapters; their
state is what the "server" holds, so a test can make a tool hold what the ledger does not.
"""

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import Session, col, select
from temporalio.client import ScheduleHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.access_drift import ensure_access_drift_schedule
from core import metrics
from core.models import AuditEvent, ToolAccountRecord
from core.tools.base import ToolSubject
from core.tools.development import DevelopmentToolAdapter, reset_development_state
from tests.utils.ops import Ops, Paid
from workflows.access_drift import SCHEDULE_ID, AccessDriftWorkflow, DriftInput, DriftResult


def stand_in(tool: str) -> DevelopmentToolAdapter:
    return DevelopmentToolAdapter(tool)


def held(tool: str) -> dict[str, str]:
    return {h.username: h.status for h in stand_in(tool).holders()}


def subject(ops: Ops, email: str) -> ToolSubject:
    user = ops.user(email)
    assert user.id is not None
    return ToolSubject(user.id, user.username, user.email, user.name, "")


def audits(ops: Ops, action: str) -> list[AuditEvent]:
    with Session(ops.engine) as s:
        return list(
            s.exec(
                select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
            ).all()
        )


def tool_status(ops: Ops, user_id: int, tool: str) -> str:
    with Session(ops.engine) as s:
        record = s.exec(
            select(ToolAccountRecord)
            .where(ToolAccountRecord.user_id == user_id)
            .where(ToolAccountRecord.tool == tool)
        ).one()
        return record.status


def counted(tool: str, action: str) -> float:
    return metrics.ACCESS_DRIFT.labels(tool, action)._value.get()  # type: ignore[attr-defined, no-any-return]


async def drift(ops: Ops, dry_run: bool = False, max_changes: int = 100) -> DriftResult:
    return await ops.client.execute_workflow(
        AccessDriftWorkflow.run,
        DriftInput(dry_run=dry_run, actor="test", max_changes=max_changes),
        id=f"access-drift-test-{uuid.uuid4().hex[:8]}",
        task_queue=ops.settings.temporal_task_queue,
        execution_timeout=timedelta(minutes=5),
    )


def items(result: DriftResult | dict[str, Any]) -> set[tuple[str, str, str, str]]:
    tools = result["tools"] if isinstance(result, dict) else [vars(t) for t in result.tools]
    found = set()
    for tool in tools:
        for item in tool["items"]:
            row = item if isinstance(item, dict) else vars(item)
            found.add((row["tool"], row["username"], row["problem"], row["action"]))
    return found


async def ready(ops: Ops, email: str) -> Paid:
    paid = await ops.buy(email)
    await ops.wait_status(paid.session_id, "READY")
    return paid


async def test_refunded_students_leftover_access_is_removed_by_one_run(ops: Ops) -> None:
    reset_development_state()  # only this test's students are held
    refunded = await ready(ops, "ada@example.com")
    active = await ready(ops, "bob@example.com")
    ops.gateway.refund_payment(
        refunded.payment_intent, idempotency_key=f"dashboard-refund-{uuid.uuid4().hex[:8]}"
    )
    await ops.wait_for(
        lambda: ops.audit(refunded.session_id, "enrollment_revoked"), what="the revocation"
    )
    ada, bob = subject(ops, "ada@example.com"), subject(ops, "bob@example.com")
    assert held("jupyter") == {ada.username: "disabled", bob.username: "ready"}

    # A revocation that missed a tool: Ada's workspace is running again. And a role of a
    # username Onramp does not know (a database restored from an old backup, say).
    stand_in("jupyter").provision(ada)
    stand_in("postgres").provision(ToolSubject(0, "ghost", "", "", ""))
    ops.switch.deprovisioned.clear()

    # The dry run says what it would do, and does nothing.
    preview = await drift(ops, dry_run=True)
    assert items(preview) == {
        ("jupyter", ada.username, "held_after_access_ended", "would_deprovision"),
        ("postgres", "ghost", "held_after_access_ended", "would_deprovision"),
    }
    assert held("jupyter")[ada.username] == "ready" and held("postgres")["ghost"] == "ready"
    assert ops.switch.deprovisioned == [] and not audits(ops, "access_drift_repaired")

    # A tool whose server is down is reported as not listed, and nothing of it changes.
    ops.switch.unreachable.add("jupyter")
    down = await drift(ops)
    assert down.unlisted == ["jupyter"]
    assert held("jupyter")[ada.username] == "ready"
    assert ("postgres", "ghost") in ops.switch.deprovisioned  # the other tools were checked
    ops.switch.unreachable.clear()
    ops.mail.wait_for(lambda m: "not listed" in str(m["Subject"]), timeout=10)
    [unlisted] = audits(ops, "access_drift_found")
    assert unlisted.details["tool"] == "jupyter" and unlisted.details["problem"] == "unlisted"

    # Bounded: over the run's budget, the repair waits for the next run.
    later = await drift(ops, max_changes=0)
    assert items(later) == {("jupyter", ada.username, "held_after_access_ended", "deferred")}
    assert later.deferred == 1 and held("jupyter")[ada.username] == "ready"

    # One run, by support, removes the rest; the active student keeps everything.
    before = counted("jupyter", "deprovisioned")
    ops.switch.deprovisioned.clear()
    result = await ops.cli_json("drift", actor="staff:ivy")
    assert items(result) == {
        ("jupyter", ada.username, "held_after_access_ended", "deprovisioned"),
    }
    assert result["repaired"] == 1 and result["unlisted"] == []
    assert ops.switch.deprovisioned == [("jupyter", ada.username)]
    assert held("jupyter") == {ada.username: "disabled", bob.username: "ready"}
    assert held("prefect")[bob.username] == "ready"
    [repaired] = [a for a in audits(ops, "access_drift_repaired") if a.details["tool"] == "jupyter"]
    assert repaired.actor == "staff:ivy" and repaired.user_id == ada.user_id
    assert repaired.details["done"] == "deprovisioned"
    assert repaired.details["username"] == ada.username
    assert f"{refunded.session_id} is REVOKED" in repaired.details["detail"]
    assert repaired.enrollment_id == ops.enrollment(refunded.session_id).id  # type: ignore[union-attr]
    assert counted("jupyter", "deprovisioned") == before + 1
    assert audits(ops, "access_drift_run")[-1].actor == "staff:ivy"
    assert ops.enrollment(active.session_id).status == "READY"  # type: ignore[union-attr]

    # Idempotent: the next run finds nothing.
    again = await drift(ops)
    assert items(again) == set() and again.repaired == 0


async def test_missing_pool_is_made_again_and_the_rest_is_reported(ops: Ops) -> None:
    reset_development_state()
    paid = await ready(ops, "cleo@example.com")
    cleo = subject(ops, "cleo@example.com")
    # Gone from the tools behind our back (an operator cleaned up the wrong pools).
    stand_in("prefect").deprovision(cleo, drop=True)
    stand_in("superset").deprovision(cleo, drop=True)
    # A staff member holds a workspace: not ours to remove, support should know.
    ops.make_user("sam.staff@staff.example.com", "staff")
    stand_in("jupyter").provision(subject(ops, "sam.staff@staff.example.com"))
    ops.mail.clear()

    preview = await drift(ops, dry_run=True)
    assert ("prefect", cleo.username, "missing", "would_provision") in items(preview)
    assert cleo.username not in held("prefect") and not ops.mail.messages

    result = await drift(ops)
    assert items(result) == {
        ("prefect", cleo.username, "missing", "provisioned"),
        ("superset", cleo.username, "missing", "reported"),
        ("jupyter", "sam_staff", "held_not_entitled", "reported"),
    }
    assert held("prefect")[cleo.username] == "ready"
    assert cleo.username not in held("superset")  # a new user would need a new password
    assert held("jupyter")["sam_staff"] == "ready"
    assert tool_status(ops, cleo.user_id, "prefect") == "ready"
    [repaired] = audits(ops, "access_drift_repaired")
    assert repaired.details["tool"] == "prefect" and repaired.details["done"] == "provisioned"
    assert repaired.enrollment_id == ops.enrollment(paid.session_id).id  # type: ignore[union-attr]
    found = {(a.details["tool"], a.details["username"]) for a in audits(ops, "access_drift_found")}
    assert found == {("superset", cleo.username), ("jupyter", "sam_staff")}
    assert result.notified
    mail = ops.mail.wait_for(lambda m: "Access drift" in str(m["Subject"]), timeout=10)
    assert mail["To"] == ops.settings.support_email
    assert cleo.username in (mail.text or "") and f"show {paid.session_id}" in (mail.text or "")

    # Still there an hour later: reported in the result, but support is not told twice.
    ops.mail.clear()
    again = await drift(ops)
    assert ("superset", cleo.username, "missing", "reported") in items(again)
    assert not again.notified and len(audits(ops, "access_drift_found")) == 2
    assert not ops.mail.messages


@pytest_asyncio.fixture
async def schedule(ops: Ops) -> AsyncIterator[ScheduleHandle]:
    await ensure_access_drift_schedule(ops.client, ops.settings)
    handle = ops.client.get_schedule_handle(SCHEDULE_ID)
    try:
        yield handle
    finally:
        try:
            await handle.delete()
        except RPCError:
            pass


async def test_boot_creates_the_schedule_and_zero_deletes_it(
    ops: Ops, schedule: ScheduleHandle
) -> None:
    desc = await schedule.describe()
    every = desc.schedule.spec.intervals[0].every
    assert every == timedelta(minutes=ops.settings.access_drift_interval_minutes)
    await schedule.pause(note="maintenance")
    changed = ops.settings.model_copy(update={"access_drift_interval_minutes": 30.0})
    await ensure_access_drift_schedule(ops.client, changed)
    desc = await schedule.describe()
    assert desc.schedule.spec.intervals[0].every == timedelta(minutes=30)
    assert desc.schedule.state.paused is True

    off = ops.settings.model_copy(update={"access_drift_interval_minutes": 0})
    await ensure_access_drift_schedule(ops.client, off)
    await ensure_access_drift_schedule(ops.client, off)  # already gone: fine
    with pytest.raises(RPCError) as gone:
        await schedule.describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
