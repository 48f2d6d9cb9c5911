"""RevokeWorkflow: withdraw an enrollment's access (refund, dispute, support) or give it back
(a dispute closed as won).

Deterministic orchestration only; the activities are in `activities/access.py` (and
`provision_tool` from `activities/enrollment.py` when access comes back). Its workflow id
comes from the Stripe object behind it (`revoke-<payment_intent>`, `revoke-<dispute>`,
`reinstate-<dispute>`), so a redelivered webhook never runs it twice.
"""

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.policies import step_retry

with workflow.unsafe.imports_passed_through():
    from core.contracts import (
        REVOKE,
        AccessChangeInput,
        AccessChangeRecord,
        AccessChangeResult,
        AccessPlan,
        ToolInput,
        ToolResult,
    )

NON_RETRYABLE = ["NoEnrollment", "RefundRefused", "ToolPermanentError", "InvalidEnrollment"]
RETRY = step_retry(NON_RETRYABLE)
STEP_TIMEOUT = timedelta(seconds=60)
# A tool that cannot be reached for this long is reported, not waited for forever.
TOOL_DEADLINE = timedelta(minutes=10)


@workflow.defn
class RevokeWorkflow:
    def __init__(self) -> None:
        self._lines: list[str] = []

    @workflow.query
    def progress(self) -> list[str]:
        return list(self._lines)

    @workflow.run
    async def run(self, inp: AccessChangeInput) -> AccessChangeResult:
        self._note(f"{inp.action} ({inp.cause}) by {inp.actor}: {inp.reason}")
        refund_id = ""
        if inp.action == REVOKE:
            if inp.refund:
                refund_id = await self._act("refund_enrollment", inp, str)
                self._note(f"refunded: {refund_id or 'nothing left to refund'}")
            # A revoked enrollment must not go on provisioning behind our back: its run is
            # cancelled first and may take a while to let in-flight provisioning finish.
            previous: str = await workflow.execute_activity(
                "stop_enrollment_run",
                inp,
                result_type=str,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RETRY,
            )
            inp = dataclasses.replace(inp, previous_status=previous)
            plan: AccessPlan = await self._act("suspend_access", inp, AccessPlan)
            step = "deprovision_tool"
        else:
            await workflow.execute_activity(
                "await_revocation",
                inp,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RETRY,
            )
            plan = await self._act("restore_access", inp, AccessPlan)
            step = "provision_tool"
        self._note(plan.note or f"tools: {', '.join(plan.tools) or 'none'}")
        done, failed = await self._each_tool(step, inp, plan)
        status: str = await self._act(
            "finish_access_change",
            AccessChangeRecord(inp, plan, refund_id, done, failed),
            str,
        )
        self._note(f"enrollment is {status}" + (f"; failed: {', '.join(failed)}" if failed else ""))
        return AccessChangeResult(
            checkout_session_id=inp.checkout_session_id,
            action=inp.action,
            status=status,
            changed=plan.changed,
            tools=done,
            failed_tools=failed,
            refund_id=refund_id,
            user_active=plan.user_active,
            note=plan.note,
        )

    async def _each_tool(
        self, activity: str, inp: AccessChangeInput, plan: AccessPlan
    ) -> tuple[list[str], list[str]]:
        if plan.user_id is None or not plan.tools:
            return [], []
        user_id = plan.user_id

        async def one(tool: str) -> bool:
            try:
                await workflow.execute_activity(
                    activity,
                    ToolInput(plan.enrollment_id, user_id, inp.checkout_session_id, tool),
                    result_type=ToolResult if activity == "provision_tool" else None,
                    start_to_close_timeout=timedelta(minutes=5),
                    schedule_to_close_timeout=TOOL_DEADLINE,
                    retry_policy=RETRY,
                    summary=f"{activity.split('_')[0]} {tool}",
                )
            except ActivityError:
                return False
            return True

        outcomes = await asyncio.gather(*(one(t) for t in plan.tools))
        done = [t for t, ok in zip(plan.tools, outcomes, strict=True) if ok]
        failed = [t for t, ok in zip(plan.tools, outcomes, strict=True) if not ok]
        return done, failed

    async def _act(self, activity: str, arg: object, result_type: type | None = None):  # type: ignore[no-untyped-def]
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RETRY,
        )

    def _note(self, line: str) -> None:
        self._lines.append(line)
        workflow.set_current_details("\n".join(f"- {entry}" for entry in self._lines))
