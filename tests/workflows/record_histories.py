"""Records one history per path of the enrollment's life with today's workflow code, into
`histories/`, for `test_history.py` to replay with every later version.

    python -m tests.workflows.record_histories

Run it before a change to either workflow (and commit the files under a name that says
which code wrote them), so runs still open when the change ships are proven replayable.
The activities are the stand-ins of `test_enrollment_workflow.py` (same names, no I/O);
the time-skipping server skips the retry budgets.
"""

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.contracts import (
    DISPUTE_LOST,
    DISPUTE_OPENED,
    DISPUTE_WON,
    REFUNDED,
    SUPPORT_REVOKE,
    Decision,
    EnrollmentInput,
    LifecycleEvent,
    OwnerCarry,
    ledger_state,
)
from core.temporal import register_search_attributes
from core.tracks import TRACKS
from tests.utils.helpers import binary
from tests.workflows.test_enrollment_workflow import DAY, StandIns, enrollment
from workflows.enrollment import EnrollmentWorkflow

HISTORIES = Path(__file__).parent / "histories"
# The code that wrote the files: bump with a change that alters what a run records. Files of
# earlier code stay (runs of it may still be open): 2026-12-02 is before the lifelong owner.
CODE = "2026-12-02-owner"


def _event(kind: str, n: int = 1) -> LifecycleEvent:
    return LifecycleEvent(kind, f"evt_recorded_{kind}_{n}", "stripe", f"recorded {kind}", f"o_{n}")


async def _failed(handle: WorkflowHandle[Any, Any], key: str) -> None:
    for _ in range(400):
        state = await handle.query(EnrollmentWorkflow.state)
        if state and (key in state.failed_tools or key in state.failed_steps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never waited for support")


def _later(
    *events: LifecycleEvent, until: Callable[[Any], bool] = lambda state: state.finished
) -> Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]:
    """Send the owner these events once `until(state)` (the enrollment landed), each waited
    for."""

    async def act(handle: WorkflowHandle[Any, Any]) -> None:
        for _ in range(400):
            state = await handle.query(EnrollmentWorkflow.state)
            if state and until(state):
                break
            await asyncio.sleep(0.05)
        for event in events:
            await handle.signal(EnrollmentWorkflow.lifecycle, event)
            await handle.execute_update(EnrollmentWorkflow.outcome, event.event_id)

    return act


def _decide(action: str, key: str = "") -> Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]:
    async def act(handle: WorkflowHandle[Any, Any]) -> None:
        if key:
            await _failed(handle, key)
        await handle.execute_update(
            EnrollmentWorkflow.decide,
            Decision(action, "staff:recorder", f"recorded {action}", tool=key),
            id=f"{action}-{key}-1",
        )

    return act


async def record_enrollment(
    env: WorkflowEnvironment,
    name: str,
    inp: EnrollmentInput,
    stand_ins: StandIns,
    act: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]] | None = None,
    heal: Callable[[], None] | None = None,
    start_signal: LifecycleEvent | None = None,
) -> None:
    queue = f"record-{uuid.uuid4().hex}"
    async with Worker(
        env.client, task_queue=queue, workflows=[EnrollmentWorkflow], activities=stand_ins.all()
    ):
        handle = await env.client.start_workflow(
            EnrollmentWorkflow.run,
            inp,
            id=f"enrollment-{inp.checkout_session_id}",
            task_queue=queue,
            start_signal="lifecycle" if start_signal else None,
            start_signal_args=[start_signal] if start_signal else [],
        )
        if act is not None:
            await act(handle)
            if heal is not None:
                heal()
        await handle.result()
        _save(name, await handle.fetch_history())


def _save(name: str, history: Any) -> None:
    path = HISTORIES / f"{name}-{CODE}.json"
    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    print(f"recorded {path.name}: {len(history.events)} events")


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server")
    )
    await register_search_attributes(env.client, "default")
    try:
        await record_enrollment(env, "enrollment-dp", enrollment("DP"), StandIns())
        await record_enrollment(env, "enrollment-fsd", enrollment("FSD"), StandIns())

        transient = StandIns()
        transient.fail["jupyter"] = 3
        await record_enrollment(env, "enrollment-dp-transient-retries", enrollment("DP"), transient)

        retry = StandIns()
        retry.fail["prefect"] = "permanent"
        await record_enrollment(
            env, "enrollment-dp-retry", enrollment("DP"), retry,
            _decide("retry", "prefect"), lambda: retry.fail.clear(),
        )  # fmt: skip

        skip = StandIns()
        skip.fail["superset"] = "permanent"
        await record_enrollment(
            env, "enrollment-dp-skip", enrollment("DP"), skip, _decide("skip", "superset")
        )

        cancel = StandIns()
        cancel.fail["postgres"] = "permanent"
        await record_enrollment(
            env, "enrollment-dp-cancel", enrollment("DP"), cancel, _decide("cancel", "postgres")
        )

        step = StandIns()
        step.step_fail["unlock_first_project"] = "invalid"
        await record_enrollment(
            env, "enrollment-dp-step-retry", enrollment("DP"), step,
            _decide("retry", "project"), lambda: step.step_fail.clear(),
        )  # fmt: skip

        await record_enrollment(
            env,
            "enrollment-dp-duplicate",
            enrollment("DP"),
            StandIns(duplicate_of="cs_test_earlier"),
        )

        # The owner: later events handled by the run itself, then its lifetime runs out.
        def owned() -> EnrollmentInput:
            return enrollment("DP", owner_seconds=120 * DAY)

        await record_enrollment(env, "owner-refund", owned(), StandIns(), _later(_event(REFUNDED)))
        await record_enrollment(
            env, "owner-support-revoke", owned(), StandIns(), _later(_event(SUPPORT_REVOKE))
        )
        refusing = StandIns()
        refusing.refuse_deprovision.add("superset")
        await record_enrollment(
            env, "owner-dispute-lost-tool-refused", owned(), refusing,
            _later(_event(DISPUTE_OPENED), _event(DISPUTE_LOST, 2)),
        )  # fmt: skip
        await record_enrollment(
            env, "owner-dispute-won", owned(), StandIns(),
            _later(_event(DISPUTE_OPENED), _event(DISPUTE_WON, 2)),
        )  # fmt: skip
        waiting = StandIns()
        waiting.fail["prefect"] = "permanent"  # a tool waits for support when the refund comes
        await record_enrollment(
            env, "owner-refund-while-provisioning", owned(), waiting,
            _later(_event(REFUNDED), until=lambda state: bool(state.failed_tools)),
        )  # fmt: skip
        # A later event for an enrollment whose run is gone: signal-with-start, the ledger.
        gone = owned()
        gone.tools = list(TRACKS["DP"].tools)
        gone.owner = OwnerCarry(ledger_state(gone, gone.tools, "READY"))
        await record_enrollment(
            env, "owner-started-by-refund", gone, StandIns(), start_signal=_event(REFUNDED)
        )
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
