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

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.contracts import (
    REINSTATE,
    REVOKE,
    AccessChangeInput,
    AccessChangeRecord,
    AccessPlan,
    Decision,
    EnrollmentInput,
    ToolInput,
    ToolResult,
)
from core.temporal import register_search_attributes
from tests.utils.helpers import binary
from tests.workflows.test_enrollment_workflow import StandIns, enrollment
from workflows.enrollment import EnrollmentWorkflow
from workflows.revoke import RevokeWorkflow

HISTORIES = Path(__file__).parent / "histories"
# The code that wrote the files: bump with a change that alters what a run records.
CODE = "2026-12-02"


def access_stand_ins(fail: set[str]) -> list[object]:
    """RevokeWorkflow's activities, by name; a tool in `fail` cannot be deprovisioned."""

    @activity.defn(name="refund_enrollment")
    async def refund_enrollment(inp: AccessChangeInput) -> str:
        return "re_recorded"

    @activity.defn(name="stop_enrollment_run")
    async def stop_enrollment_run(inp: AccessChangeInput) -> str:
        return "READY"

    @activity.defn(name="suspend_access")
    async def suspend_access(inp: AccessChangeInput) -> AccessPlan:
        return AccessPlan(7, 42, ["postgres", "superset", "prefect", "jupyter"])

    @activity.defn(name="await_revocation")
    async def await_revocation(inp: AccessChangeInput) -> None:
        return None

    @activity.defn(name="restore_access")
    async def restore_access(inp: AccessChangeInput) -> AccessPlan:
        return AccessPlan(7, 42, ["postgres", "superset", "prefect", "jupyter"])

    @activity.defn(name="deprovision_tool")
    async def deprovision_tool(inp: ToolInput) -> None:
        if inp.tool in fail:
            raise ApplicationError("refused", type="ToolPermanentError", non_retryable=True)

    @activity.defn(name="provision_tool")
    async def provision_tool(inp: ToolInput) -> ToolResult:
        return ToolResult(inp.tool, "ready", f"http://tools/{inp.tool}")

    @activity.defn(name="finish_access_change")
    async def finish_access_change(rec: AccessChangeRecord) -> str:
        return "REVOKED" if rec.inp.action == REVOKE else "READY"

    return [
        refund_enrollment,
        stop_enrollment_run,
        suspend_access,
        await_revocation,
        restore_access,
        deprovision_tool,
        provision_tool,
        finish_access_change,
    ]


async def _failed(handle: WorkflowHandle[Any, Any], key: str) -> None:
    for _ in range(400):
        state = await handle.query(EnrollmentWorkflow.state)
        if state and (key in state.failed_tools or key in state.failed_steps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never waited for support")


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
        )
        if act is not None:
            await act(handle)
            if heal is not None:
                heal()
        await handle.result()
        _save(name, await handle.fetch_history())


async def record_access(
    env: WorkflowEnvironment, name: str, inp: AccessChangeInput, fail: set[str] | None = None
) -> None:
    queue = f"record-{uuid.uuid4().hex}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RevokeWorkflow],
        activities=access_stand_ins(fail or set()),
    ):
        handle = await env.client.start_workflow(
            RevokeWorkflow.run, inp, id=f"{inp.action}-{uuid.uuid4().hex}", task_queue=queue
        )
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

        sid = f"cs_test_{uuid.uuid4().hex}"
        await record_access(
            env,
            "revoke-refund",
            AccessChangeInput(sid, REVOKE, "refund", "stripe", "charge refunded in full"),
        )
        await record_access(
            env,
            "revoke-support-refund",
            AccessChangeInput(sid, REVOKE, "support", "staff:recorder", "asked", refund=True),
        )
        await record_access(
            env,
            "revoke-dispute-lost-tool-refused",
            AccessChangeInput(sid, REVOKE, "dispute", "stripe", "dispute opened"),
            fail={"superset"},
        )
        await record_access(
            env,
            "reinstate-dispute-won",
            AccessChangeInput(sid, REINSTATE, "dispute", "stripe", "dispute won"),
        )
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
