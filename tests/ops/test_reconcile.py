"""Nothing paid is lost: a paid Checkout Session whose webhook never arrived is enrolled by
one run of the `reconcile-enrollments` Schedule, exactly as the worker creates it at boot."""

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlmodel import Session, col, select
from temporalio.client import ScheduleHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.reconcile import ensure_reconcile_schedule
from core.contracts import workflow_id_for
from core.models import AuditEvent
from tests.utils.ops import Ops
from workflows.reconcile import SCHEDULE_ID


def reconcile_runs(ops: Ops) -> list[AuditEvent]:
    with Session(ops.engine) as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(AuditEvent.action == "reconcile_run")
                .order_by(col(AuditEvent.id))
            ).all()
        )


@pytest_asyncio.fixture
async def schedule(ops: Ops) -> AsyncIterator[ScheduleHandle]:
    """The Schedule as the worker's boot creates it; deleted afterwards (it is global)."""
    await ensure_reconcile_schedule(ops.client, ops.settings)
    handle = ops.client.get_schedule_handle(SCHEDULE_ID)
    try:
        yield handle
    finally:
        await handle.delete()


async def test_lost_webhook_is_enrolled_by_one_reconcile_run(
    ops: Ops, schedule: ScheduleHandle
) -> None:
    desc = await schedule.describe()
    interval = desc.schedule.spec.intervals[0].every
    assert interval == timedelta(minutes=ops.settings.reconcile_interval_minutes)

    async with ops.webhooks_lost():
        paid = await ops.buy("ada@example.com")
        with pytest.raises(RPCError) as missing:
            await ops.client.get_workflow_handle(workflow_id_for(paid.session_id)).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND
        assert ops.enrollment(paid.session_id).status == "CHECKOUT_CREATED"  # type: ignore[union-attr]

        await schedule.trigger()
        await ops.wait_status(paid.session_id, "READY")

    [confirmed] = ops.audit(paid.session_id, "payment_confirmed")
    assert confirmed.details["source"] == "reconcile"
    # Exactly one run started it. The Schedule's own tick (aligned to the clock) may also
    # fall inside this test; such a run is the Schedule's too and finds nothing new.
    runs = await ops.wait_for(
        lambda: [r for r in reconcile_runs(ops) if paid.session_id in r.details["started"]],
        what="reconcile audit",
    )
    assert len(runs) == 1 and runs[0].actor == "schedule"
    assert {r.actor for r in reconcile_runs(ops)} == {"schedule"}
    ops.mail.wait_for(lambda m: "ada@example.com" in m["To"], timeout=10)

    # A second run finds it fulfilled and starts nothing.
    again = await ops.cli_json("reconcile", actor="staff:ivy")
    assert paid.session_id not in again["started"] and again["known"] >= 1
    assert reconcile_runs(ops)[-1].actor == "staff:ivy"


async def test_boot_keeps_the_schedule_and_its_pause(ops: Ops, schedule: ScheduleHandle) -> None:
    await schedule.pause(note="maintenance")
    # Another worker boots with a new interval: the Schedule follows, paused as it was.
    changed = ops.settings.model_copy(update={"reconcile_interval_minutes": 3.0})
    await ensure_reconcile_schedule(ops.client, changed)
    desc = await schedule.describe()
    assert desc.schedule.spec.intervals[0].every == timedelta(minutes=3)
    assert desc.schedule.state.paused is True
