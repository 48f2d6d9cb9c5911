"""EnrollmentWorkflow on the time-skipping test server, activities replaced by stand-ins
registered under the same names."""

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.contracts import (
    DISPUTE_OPENED,
    DISPUTE_WON,
    REFUNDED,
    REVOKE,
    AccessChangeInput,
    AccessChangeRecord,
    AccessChangeResult,
    AccessPlan,
    AccountResult,
    CancelInput,
    Decision,
    EnrollmentInput,
    EnrollmentOptions,
    EnrollmentRef,
    EnrollmentState,
    LifecycleEvent,
    OwnerCarry,
    StatusInput,
    ToolFailure,
    ToolInput,
    ToolResult,
    WelcomeEmailInput,
    ledger_state,
)
from core.tracks import TRACKS
from workflows.enrollment import EnrollmentWorkflow

DAY = 86_400.0


class StandIns:
    """Activities with the real names; `fail` maps a tool to how it should fail."""

    def __init__(self, duplicate_of: str | None = None, account_created: bool = True) -> None:
        self.calls: Counter[str] = Counter()
        self.fail: dict[str, str | int] = {}
        self.duplicate_of = duplicate_of
        self.account_created = account_created
        self.welcome: list[WelcomeEmailInput] = []
        self.flags: list[ToolFailure] = []
        self.cancels: list[CancelInput] = []
        self.step_fail: dict[str, str] = {}  # activity name -> "invalid" | "transient"
        # The owner's steps: what was withdrawn or restored, tools that refuse to go.
        self.access: list[AccessChangeInput] = []
        self.deprovisioned: list[str] = []
        self.refuse_deprovision: set[str] = set()
        self.hold_provision: asyncio.Event | None = None  # set: provision_tool may return

    def all(self) -> list[object]:
        @activity.defn(name="record_payment")
        async def record_payment(inp: EnrollmentInput) -> int:
            self.calls["record_payment"] += 1
            return 7

        @activity.defn(name="create_account")
        async def create_account(inp: EnrollmentInput) -> AccountResult:
            self.calls["create_account"] += 1
            return AccountResult(7, 42, "ada", self.account_created, self.duplicate_of)

        @activity.defn(name="mark_enrolled")
        async def mark_enrolled(ref: EnrollmentRef) -> None:
            self.calls["mark_enrolled"] += 1

        @activity.defn(name="provision_tool")
        async def provision_tool(inp: ToolInput) -> ToolResult:
            self.calls[f"provision:{inp.tool}"] += 1
            if self.hold_provision is not None:
                await self.hold_provision.wait()
            mode = self.fail.get(inp.tool)
            if mode == "permanent":
                raise ApplicationError("bad config", type="ToolPermanentError", non_retryable=True)
            if isinstance(mode, int) and self.calls[f"provision:{inp.tool}"] <= mode:
                raise ApplicationError("connection refused", type="ToolTransientError")
            return ToolResult(inp.tool, "ready", f"http://tools/{inp.tool}")

        @activity.defn(name="flag_for_support")
        async def flag_for_support(f: ToolFailure) -> None:
            self.flags.append(f)

        @activity.defn(name="record_tool_decision")
        async def record_tool_decision(inp: ToolInput, d: Decision) -> None:
            self.calls[f"decision:{d.action}:{inp.tool}"] += 1

        def maybe_fail(name: str) -> None:
            mode = self.step_fail.get(name)
            if mode == "invalid":
                raise ApplicationError(
                    "no first project", type="InvalidEnrollment", non_retryable=True
                )
            if mode == "transient":
                raise RuntimeError("SMTP connection refused")

        @activity.defn(name="unlock_first_project")
        async def unlock_first_project(ref: EnrollmentRef) -> int:
            self.calls["unlock_first_project"] += 1
            maybe_fail("unlock_first_project")
            return 1

        @activity.defn(name="send_welcome_email")
        async def send_welcome_email(inp: WelcomeEmailInput) -> None:
            self.calls["send_welcome_email"] += 1
            maybe_fail("send_welcome_email")
            self.welcome.append(inp)

        @activity.defn(name="set_enrollment_status")
        async def set_enrollment_status(inp: StatusInput) -> None:
            self.calls[f"status:{inp.status}"] += 1

        @activity.defn(name="cancel_enrollment")
        async def cancel_enrollment(inp: CancelInput) -> None:
            self.cancels.append(inp)

        @activity.defn(name="refund_enrollment")
        async def refund_enrollment(inp: AccessChangeInput) -> str:
            self.calls["refund_enrollment"] += 1
            return "re_standin"

        @activity.defn(name="suspend_access")
        async def suspend_access(inp: AccessChangeInput) -> AccessPlan:
            self.access.append(inp)
            return AccessPlan(7, 42, list(TRACKS["DP"].tools))

        @activity.defn(name="restore_access")
        async def restore_access(inp: AccessChangeInput) -> AccessPlan:
            self.access.append(inp)
            return AccessPlan(7, 42, list(TRACKS["DP"].tools))

        @activity.defn(name="deprovision_tool")
        async def deprovision_tool(inp: ToolInput) -> None:
            if inp.tool in self.refuse_deprovision:
                raise ApplicationError("refused", type="ToolPermanentError", non_retryable=True)
            self.deprovisioned.append(inp.tool)

        @activity.defn(name="finish_access_change")
        async def finish_access_change(rec: AccessChangeRecord) -> str:
            return "REVOKED" if rec.inp.action == REVOKE else "READY"

        return [
            refund_enrollment,
            suspend_access,
            restore_access,
            deprovision_tool,
            finish_access_change,
            record_payment,
            create_account,
            mark_enrolled,
            provision_tool,
            flag_for_support,
            record_tool_decision,
            unlock_first_project,
            send_welcome_email,
            set_enrollment_status,
            cancel_enrollment,
        ]


def enrollment(
    track: str = "DP", retry_seconds: float = 600, owner_seconds: float = 0.0
) -> EnrollmentInput:
    return EnrollmentInput(
        checkout_session_id=f"cs_test_{uuid.uuid4().hex}",
        email="ada@example.com",
        name="Ada",
        track=track,
        amount=49_900,
        currency="usd",
        options=EnrollmentOptions(tool_retry_seconds=retry_seconds, owner_seconds=owner_seconds),
    )


def stripe_event(kind: str, n: int = 1) -> LifecycleEvent:
    return LifecycleEvent(kind, f"evt_{kind}_{n}", "stripe", f"{kind} in the test", f"obj_{n}")


async def run(env: WorkflowEnvironment, stand_ins: StandIns, inp: EnrollmentInput):  # type: ignore[no-untyped-def]
    queue = f"tq-{uuid.uuid4().hex}"
    worker = Worker(
        env.client, task_queue=queue, workflows=[EnrollmentWorkflow], activities=stand_ins.all()
    )
    return worker, await env.client.start_workflow(
        EnrollmentWorkflow.run, inp, id=f"enrollment-{inp.checkout_session_id}", task_queue=queue
    )


async def test_dp_enrollment_provisions_all_four_tools_once(ts_env: WorkflowEnvironment) -> None:
    s = StandIns()
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        state: EnrollmentState = await handle.result()
    assert state.status == "READY" and state.finished and state.student_ready
    assert sorted(state.tools) == ["jupyter", "postgres", "prefect", "superset"]
    assert all(s.calls[f"provision:{t}"] == 1 for t in state.tools)
    assert s.calls["unlock_first_project"] == 1 and len(s.welcome) == 1
    assert [st.status for st in state.steps] == ["done"] * len(state.steps)


async def test_fsd_enrollment_gets_only_codeserver(ts_env: WorkflowEnvironment) -> None:
    s = StandIns()
    worker, handle = await run(ts_env, s, enrollment("FSD"))
    async with worker:
        state = await handle.result()
    assert list(state.tools) == ["codeserver"]
    assert [st.key for st in state.steps] == [
        "payment",
        "account",
        "tool:codeserver",
        "project",
        "email",
    ]


async def test_transient_tool_failures_are_retried_until_success(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.fail["superset"] = 3
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        state = await handle.result()
    assert state.status == "READY"
    assert s.calls["provision:superset"] == 4
    assert s.flags == []


async def test_permanent_failure_flags_support_and_keeps_the_rest_going(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.fail["prefect"] = "permanent"
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        # The student still lands: project unlocked and welcome email sent, with prefect pending.
        for _ in range(100):
            state = await handle.query(EnrollmentWorkflow.state)
            if state and state.student_ready:
                break
            await asyncio.sleep(0.05)
        assert state is not None and state.student_ready
        assert state.needs_attention and state.failed_tools == ["prefect"]
        assert state.status == "NEEDS_ATTENTION"
        assert s.welcome[0].pending_tools == ["prefect"]
        assert sorted(state.tools) == ["jupyter", "postgres", "superset"]
        assert [f.tool for f in s.flags] == ["prefect"]
        assert s.calls["provision:prefect"] == 1  # non-retryable: no retries

        s.fail.pop("prefect")
        await handle.execute_update(
            EnrollmentWorkflow.decide, Decision("retry", "staff:bo", "config fixed", tool="prefect")
        )
        state = await handle.result()
    assert state.status == "READY" and not state.needs_attention
    assert s.calls["provision:prefect"] == 2 and s.calls["decision:retry:prefect"] == 1
    # Nothing else provisioned twice.
    assert all(s.calls[f"provision:{t}"] == 1 for t in ("postgres", "superset", "jupyter"))


async def test_transient_failure_past_the_retry_budget_waits_for_support(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.fail["jupyter"] = 10_000
    worker, handle = await run(ts_env, s, enrollment("DP", retry_seconds=120))
    async with worker:
        # Skip past the 120 s retry budget; the server fires the retry timers meanwhile.
        await ts_env.sleep(timedelta(seconds=180))
        state = await handle.query(EnrollmentWorkflow.state)
        assert state is not None and state.failed_tools == ["jupyter"]
        assert s.calls["provision:jupyter"] > 1
        await handle.execute_update(
            EnrollmentWorkflow.decide,
            Decision("skip", "staff:bo", "student declined", tool="jupyter"),
        )
        state = await handle.result()
    assert state.status == "READY"
    assert state.step("tool:jupyter").status == "skipped"


async def test_decisions_are_validated(ts_env: WorkflowEnvironment) -> None:
    s = StandIns()
    s.fail["postgres"] = "permanent"
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        for _ in range(100):
            state = await handle.query(EnrollmentWorkflow.state)
            if state and state.failed_tools:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                EnrollmentWorkflow.decide, Decision("retry", "staff:bo", "x", tool="superset")
            )
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                EnrollmentWorkflow.decide, Decision("retry", "", "", tool="postgres")
            )
        await handle.execute_update(
            EnrollmentWorkflow.decide, Decision("cancel", "staff:bo", "student asked", refund=True)
        )
        state = await handle.result()
    assert state.status == "CANCELLED"
    assert len(s.cancels) == 1 and s.cancels[0].refund and s.cancels[0].actor == "staff:bo"


async def test_duplicate_purchase_is_held_for_support(ts_env: WorkflowEnvironment) -> None:
    s = StandIns(duplicate_of="cs_test_earlier")
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        state = await handle.result()
    assert state.status == "DUPLICATE" and state.needs_attention
    assert not any(k.startswith("provision:") for k in s.calls)
    assert s.flags[0].error_type == "DuplicatePurchase"


async def test_the_tool_list_comes_from_the_input_not_the_catalogue(
    ts_env: WorkflowEnvironment,
) -> None:
    """A catalogue change (a tool added to DP) never alters a run already started."""
    s = StandIns()
    inp = enrollment("DP")
    inp.tools = ["postgres", "jupyter"]
    worker, handle = await run(ts_env, s, inp)
    async with worker:
        state: EnrollmentState = await handle.result()
    assert sorted(state.tools) == ["jupyter", "postgres"]
    assert [st.key for st in state.steps if st.key.startswith("tool:")] == [
        "tool:postgres",
        "tool:jupyter",
    ]
    assert not any(k in s.calls for k in ("provision:superset", "provision:prefect"))


async def test_a_cancel_sent_with_the_start_is_accepted(ts_env: WorkflowEnvironment) -> None:
    """The state exists from the first workflow task (@workflow.init): an update arriving
    before the run has executed a line is validated, not refused."""
    s = StandIns()
    inp = enrollment("DP")
    queue = f"tq-{uuid.uuid4().hex}"
    handle = await ts_env.client.start_workflow(
        EnrollmentWorkflow.run, inp, id=f"enrollment-{inp.checkout_session_id}", task_queue=queue
    )
    worker = Worker(
        ts_env.client, task_queue=queue, workflows=[EnrollmentWorkflow], activities=s.all()
    )
    update = asyncio.create_task(
        handle.execute_update(
            EnrollmentWorkflow.decide, Decision("cancel", "staff:bo", "paid by mistake")
        )
    )
    await asyncio.sleep(0.2)  # the update waits in Temporal with the first workflow task
    async with worker:
        await update
        state: EnrollmentState = await handle.result()
    assert state.status == "CANCELLED" and len(s.cancels) == 1


async def wait_failed_step(handle, step: str) -> EnrollmentState:  # type: ignore[no-untyped-def]
    for _ in range(200):
        state = await handle.query(EnrollmentWorkflow.state)
        if state and step in state.failed_steps:
            return state  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{step} never waited for support")


async def test_a_step_refused_for_good_waits_for_support_instead_of_failing_the_run(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.step_fail["unlock_first_project"] = "invalid"
    worker, handle = await run(ts_env, s, enrollment("DP"))
    async with worker:
        state = await wait_failed_step(handle, "project")
        assert state.status == "NEEDS_ATTENTION" and state.needs_attention
        assert state.step("project").status == "failed"
        assert "no first project" in state.step("project").detail
        assert [(f.step, f.error_type) for f in s.flags] == [("project", "InvalidEnrollment")]
        assert s.calls["unlock_first_project"] == 1  # non-retryable: at once
        with pytest.raises(WorkflowUpdateFailedError):  # a step is retried or cancelled
            await handle.execute_update(
                EnrollmentWorkflow.decide, Decision("skip", "staff:bo", "x", tool="project")
            )
        s.step_fail.clear()
        await handle.execute_update(
            EnrollmentWorkflow.decide, Decision("retry", "staff:bo", "seeded", tool="project")
        )
        state = await handle.result()
    assert state.status == "READY" and not state.failed_steps and state.student_ready
    assert s.calls["unlock_first_project"] == 2 and s.calls["decision:retry:project"] == 1


async def test_a_step_out_of_its_budget_waits_for_support_and_can_be_cancelled(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.step_fail["send_welcome_email"] = "transient"
    inp = enrollment("DP")
    inp.options.step_budget_seconds = 120
    worker, handle = await run(ts_env, s, inp)
    async with worker:
        await ts_env.sleep(timedelta(seconds=180))  # past the budget, retries meanwhile
        state = await wait_failed_step(handle, "email")
        assert s.calls["send_welcome_email"] > 1 and state.status == "NEEDS_ATTENTION"
        assert [f.step for f in s.flags] == ["email"]
        await handle.execute_update(
            EnrollmentWorkflow.decide, Decision("cancel", "staff:bo", "mail server gone")
        )
        state = await handle.result()
    assert state.status == "CANCELLED" and len(s.cancels) == 1 and not state.student_ready


# ---- the owner: later events, one at a time ----------------------------------------------


async def wait_state(handle, check) -> EnrollmentState:  # type: ignore[no-untyped-def]
    for _ in range(200):
        state = await handle.query(EnrollmentWorkflow.state)
        if state and check(state):
            return state  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached: {state}")


async def test_the_run_owns_the_enrollment_after_it_lands(ts_env: WorkflowEnvironment) -> None:
    """READY, the run stays open: a refund withdraws every tool once (its redelivery is the
    same event), a dispute won gives them back, and the run closes when its lifetime ends."""
    s = StandIns()
    worker, handle = await run(ts_env, s, enrollment("DP", owner_seconds=120 * DAY))
    async with worker:
        await wait_state(handle, lambda st: st.status == "READY" and st.finished)
        refund = stripe_event(REFUNDED)
        await handle.signal(EnrollmentWorkflow.lifecycle, refund)
        await handle.signal(EnrollmentWorkflow.lifecycle, refund)  # redelivered
        revoked: AccessChangeResult = await handle.execute_update(
            EnrollmentWorkflow.outcome, refund.event_id
        )
        assert revoked.status == "REVOKED" and sorted(revoked.tools) == sorted(TRACKS["DP"].tools)
        assert sorted(s.deprovisioned) == sorted(TRACKS["DP"].tools)  # once each
        assert (await handle.query(EnrollmentWorkflow.state)).status == "REVOKED"

        won = stripe_event(DISPUTE_WON, 2)
        await handle.signal(EnrollmentWorkflow.lifecycle, won)
        restored = await handle.execute_update(EnrollmentWorkflow.outcome, won.event_id)
        assert restored.status == "READY" and restored.action == "reinstate"
        assert [a.cause for a in s.access] == ["refund", "dispute"]
        assert s.calls["provision:postgres"] == 2  # made again by the reinstatement
        state: EnrollmentState = await handle.result()  # the lifetime runs out (time skips)
    assert state.status == "READY"
    assert len(s.deprovisioned) == len(TRACKS["DP"].tools)


async def test_a_refund_while_tools_provision_stops_and_leaves_nothing(
    ts_env: WorkflowEnvironment,
) -> None:
    """The refund arrives with the tools in flight: provisioning stops (nothing retried, no
    welcome email, no support alert) and every tool of the track is deprovisioned."""
    s = StandIns()
    s.hold_provision = asyncio.Event()
    worker, handle = await run(ts_env, s, enrollment("DP", owner_seconds=DAY))
    async with worker:
        await wait_state(handle, lambda st: st.step("tool:postgres").status == "running")
        refund = stripe_event(REFUNDED)
        await handle.signal(EnrollmentWorkflow.lifecycle, refund)
        s.hold_provision.set()  # the attempts in flight finish; none is started again
        result = await handle.execute_update(EnrollmentWorkflow.outcome, refund.event_id)
        state: EnrollmentState = await handle.result()
    assert result.status == "REVOKED" and state.status == "REVOKED"
    assert sorted(s.deprovisioned) == sorted(TRACKS["DP"].tools)
    assert s.welcome == [] and s.flags == [] and s.calls["unlock_first_project"] == 0
    assert all(s.calls[f"provision:{t}"] <= 1 for t in TRACKS["DP"].tools)
    assert "status:READY" not in s.calls


async def test_a_dispute_while_a_tool_waits_for_support_ends_the_wait(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.fail["prefect"] = "permanent"
    worker, handle = await run(ts_env, s, enrollment("DP", owner_seconds=DAY))
    async with worker:
        await wait_state(handle, lambda st: st.failed_tools == ["prefect"] and st.student_ready)
        dispute = stripe_event(DISPUTE_OPENED)
        await handle.signal(EnrollmentWorkflow.lifecycle, dispute)
        result = await handle.execute_update(EnrollmentWorkflow.outcome, dispute.event_id)
        state = await handle.query(EnrollmentWorkflow.state)
        assert state.failed_tools == [] and not state.needs_attention
        with pytest.raises(WorkflowUpdateFailedError):  # nothing waits for a decision now
            await handle.execute_update(
                EnrollmentWorkflow.decide, Decision("retry", "staff:bo", "x", tool="prefect")
            )
    assert result.status == "REVOKED" and s.access[0].cause == "dispute"
    assert sorted(s.deprovisioned) == sorted(TRACKS["DP"].tools)


async def test_an_event_for_a_closed_enrollment_starts_a_run_that_never_provisions(
    ts_env: WorkflowEnvironment,
) -> None:
    """Signal-with-start after the history is gone: the run begins from the ledger's status
    and handles the event; nothing of fulfilment runs again."""
    s = StandIns()
    inp = enrollment("DP", owner_seconds=0)
    tools = list(TRACKS["DP"].tools)
    inp.tools = tools
    inp.owner = OwnerCarry(ledger_state(inp, tools, "READY"))
    queue = f"tq-{uuid.uuid4().hex}"
    refund = stripe_event(REFUNDED)
    async with Worker(
        ts_env.client, task_queue=queue, workflows=[EnrollmentWorkflow], activities=s.all()
    ):
        handle = await ts_env.client.start_workflow(
            EnrollmentWorkflow.run,
            inp,
            id=f"enrollment-{inp.checkout_session_id}",
            task_queue=queue,
            start_signal="lifecycle",
            start_signal_args=[refund],
        )
        state: EnrollmentState = await handle.result()
    assert state.status == "REVOKED"
    assert not any(k.startswith("provision:") for k in s.calls)
    assert s.calls["record_payment"] == 0 and s.calls["create_account"] == 0
    assert sorted(s.deprovisioned) == sorted(tools)


async def test_support_revoke_refunds_first_and_a_tool_refusing_is_reported(
    ts_env: WorkflowEnvironment,
) -> None:
    s = StandIns()
    s.refuse_deprovision.add("superset")
    worker, handle = await run(ts_env, s, enrollment("DP", owner_seconds=DAY))
    async with worker:
        await wait_state(handle, lambda st: st.status == "READY")
        revoke = LifecycleEvent("support_revoke", "support-revoke-1", "staff:bo", "fraud")
        await handle.signal(EnrollmentWorkflow.lifecycle, revoke)
        result = await handle.execute_update(EnrollmentWorkflow.outcome, revoke.event_id)
    assert result.refund_id == "re_standin" and result.failed_tools == ["superset"]
    assert s.access[0].refund and s.access[0].cause == "support"


async def test_a_continued_run_handles_what_was_queued_and_ignores_what_was_handled(
    ts_env: WorkflowEnvironment,
) -> None:
    """What continue-as-new hands the next run: the queue goes on in order, an event id
    handled before is a redelivery, and an outcome from before still answers."""
    s = StandIns()
    inp = enrollment("DP", owner_seconds=DAY)
    inp.tools = list(TRACKS["DP"].tools)
    handled = stripe_event(DISPUTE_OPENED)
    earlier = AccessChangeResult(inp.checkout_session_id, REVOKE, "REVOKED", True)
    queued = stripe_event(DISPUTE_WON, 2)
    inp.owner = OwnerCarry(
        ledger_state(inp, inp.tools, "REVOKED"),
        seen=[handled.event_id, queued.event_id],
        pending=[queued],
        outcomes={handled.event_id: earlier},
    )
    worker, handle = await run(ts_env, s, inp)
    async with worker:
        restored = await handle.execute_update(EnrollmentWorkflow.outcome, queued.event_id)
        await handle.signal(EnrollmentWorkflow.lifecycle, handled)  # redelivered: ignored
        before = await handle.execute_update(EnrollmentWorkflow.outcome, handled.event_id)
        state: EnrollmentState = await handle.result()
    assert restored.status == "READY" and before.status == "REVOKED"
    assert [a.action for a in s.access] == ["reinstate"] and s.deprovisioned == []
    assert state.status == "READY"
