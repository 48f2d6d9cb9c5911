"""EnrollmentWorkflow: one paid Checkout Session becomes exactly one enrollment.

Deterministic orchestration only; every side effect is an activity in `activities/`.
A tool that runs out of retries does not fail the enrollment: the rest goes on, support
is told, and the workflow waits for support's decision (retry, skip or cancel).
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.policies import step_retry

with workflow.unsafe.imports_passed_through():
    from core.contracts import (
        DEVELOPMENT_DETAIL,
        SA_FAILED_TOOL,
        SA_NEEDS_ATTENTION,
        SA_STATUS,
        AccountResult,
        CancelInput,
        Decision,
        EnrollmentInput,
        EnrollmentRef,
        EnrollmentState,
        EnrollmentStatus,
        StatusInput,
        ToolFailure,
        ToolInput,
        ToolResult,
        ToolStatus,
        WelcomeEmailInput,
        initial_state,
    )
    from core.tracks import TRACKS


class _Ended(Exception):
    """The ledger says access ended before the run recorded the payment."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _Cancelled(Exception):
    """Support cancelled while a step waited for their decision (never leaves the run)."""


def state_before(key: str) -> str:
    """The status a step's enrollment returns to once support resolved its failure."""
    return EnrollmentStatus.PAID if key in ("payment", "account") else EnrollmentStatus.ENROLLED


# Business failures are raised by activities as these non-retryable application errors.
NON_RETRYABLE = ["InvalidEnrollment", "ToolPermanentError", "AccessEnded"]

STEP_RETRY = step_retry(NON_RETRYABLE)
# Short: after a lost worker, a step is retried elsewhere only once this runs out.
STEP_TIMEOUT = timedelta(seconds=20)
# Runs started after this patch publish once per workflow task, and only what changed;
# runs started before it replay with one publish per state change, as they were recorded.
COALESCED_PUBLISH = "coalesced-publish"
# Runs started after this one also write the memo only at milestones: when the status, the
# attention flag or the failed tools change, or the student can land. Every memo write is a
# visibility update on the server, so one per step would cost throughput (bench/README.md).
# Step-by-step progress stays in the current details and the `state` query.
MILESTONE_MEMO = "milestone-memo"


@workflow.defn
class EnrollmentWorkflow:
    @workflow.init
    def __init__(self, inp: EnrollmentInput) -> None:
        # The state exists before the first workflow task runs, so an update (a support
        # decision) arriving with the start is validated against it, not refused.
        # The tool list travels in the input; runs started before it read the catalogue.
        track = TRACKS.get(inp.track)
        self._tools = list(inp.tools) if inp.tools else (list(track.tools) if track else [])
        self._state: EnrollmentState | None = initial_state(inp, self._tools)
        self._input = inp
        self._enrollment_id: int | None = None
        self._account: AccountResult | None = None
        self._decisions: dict[str, Decision] = {}
        self._cancel: Decision | None = None
        self._first_round: set[str] = set()
        self._coalesce = False
        self._milestones = False
        self._dirty = False
        self._published: tuple[object, dict[str, object] | None] | None = None
        self._publisher: asyncio.Task[None] | None = None

    # ---- reads and support decisions -------------------------------------------------

    @workflow.query
    def state(self) -> EnrollmentState | None:
        return self._state

    @workflow.update
    async def decide(self, decision: Decision) -> EnrollmentState | None:
        if decision.action == "cancel":
            self._cancel = decision
        else:
            self._decisions[decision.tool] = decision
        await workflow.wait_condition(
            lambda: decision.tool not in self._decisions or self._cancel is not None
        )
        return self._state

    @decide.validator
    def _validate_decision(self, decision: Decision) -> None:
        state = self._state
        if not decision.actor or not decision.reason:
            raise ApplicationError("a decision needs an actor and a reason")
        if state is None or state.finished:
            raise ApplicationError("this enrollment is already finished")
        if decision.action == "cancel":
            return
        if decision.action not in ("retry", "skip"):
            raise ApplicationError(f"unknown action {decision.action!r}")
        if decision.tool in state.failed_steps:
            if decision.action == "skip":
                raise ApplicationError(f"step {decision.tool!r} cannot be skipped: retry or cancel")
            return
        if decision.tool not in state.failed_tools:
            raise ApplicationError(f"tool {decision.tool!r} is not waiting for a decision")

    # ---- the enrollment --------------------------------------------------------------

    @workflow.run
    async def run(self, inp: EnrollmentInput) -> EnrollmentState:
        result = await self._enroll(inp)
        # A decision still being answered gets its answer before the run closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _enroll(self, inp: EnrollmentInput) -> EnrollmentState:
        self._coalesce = workflow.patched(COALESCED_PUBLISH)
        self._milestones = self._coalesce and workflow.patched(MILESTONE_MEMO)
        if self._milestones:
            # What the run was started with (start_options) is published already.
            started = workflow.info().typed_search_attributes
            self._published = (
                (started.get(SA_STATUS), started.get(SA_NEEDS_ATTENTION), ()),
                {"student_ready": False},
            )
        if self._coalesce:
            self._publisher = asyncio.create_task(self._publish_when_changed())
        tools = self._tools
        state = self._state
        assert state is not None

        try:
            return await self._through(inp, tools)
        except _Ended as ended:
            # The database closed it first (a refund before the payment was recorded):
            # nothing was provisioned; the run ends with the ledger's status.
            state.status, state.finished = ended.status, True
            self._publish(final=True)
            return state
        except _Cancelled:
            # Support cancelled while a step waited for their decision.
            assert self._cancel is not None
            return await self._cancel_enrollment(inp, self._account, self._cancel)

    async def _through(self, inp: EnrollmentInput, tools: list[str]) -> EnrollmentState:
        state = self._state
        assert state is not None
        self._enrollment_id = await self._step("payment", "record_payment", inp, result_type=int)
        account: AccountResult = await self._step(
            "account", "create_account", inp, result_type=AccountResult
        )
        self._account = account
        state.user_id, state.enrollment_id = account.user_id, account.enrollment_id
        state.account_created = account.account_created
        if account.duplicate_of:
            return await self._hold_duplicate(account)

        ref = EnrollmentRef(account.enrollment_id, account.user_id, inp.checkout_session_id)
        await self._guarded("account", "mark_enrolled", ref, mark_step=False)
        self._set_status(EnrollmentStatus.ENROLLED)

        tool_tasks = [asyncio.create_task(self._provision(inp, account, t)) for t in tools]
        # The student lands once every tool has had its first round, ready or not.
        await workflow.wait_condition(
            lambda: len(self._first_round) == len(tools) or self._cancel is not None
        )
        if self._cancel is None:
            try:
                await self._step("project", "unlock_first_project", ref)
                ready = [r for r in state.tools.values() if r.status == ToolStatus.READY]
                await self._step(
                    "email",
                    "send_welcome_email",
                    WelcomeEmailInput(
                        account.enrollment_id,
                        account.user_id,
                        account.account_created,
                        tools=ready,
                        pending_tools=list(state.failed_tools),
                    ),
                )
            except _Cancelled:
                pass
            else:
                state.student_ready = True
                self._publish()
        await asyncio.gather(*tool_tasks)

        if self._cancel is not None:
            return await self._cancel_enrollment(inp, account, self._cancel)
        self._set_status(EnrollmentStatus.READY)
        await self._guarded(
            "email",
            "set_enrollment_status",
            StatusInput(account.enrollment_id, EnrollmentStatus.READY),
            mark_step=False,
        )
        state.finished = True
        self._publish(final=True)
        return state

    async def _provision(self, inp: EnrollmentInput, account: AccountResult, tool: str) -> None:
        state = self._state
        assert state is not None
        step = state.step(f"tool:{tool}")
        tool_input = ToolInput(
            account.enrollment_id,
            account.user_id,
            inp.checkout_session_id,
            tool,
            account.username,
            account.email,
            account.name,
        )
        while True:
            step.status, step.detail = "running", ""
            self._publish()
            try:
                result: ToolResult = await workflow.execute_activity(
                    "provision_tool",
                    tool_input,
                    result_type=ToolResult,
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=timedelta(seconds=30),
                    schedule_to_close_timeout=timedelta(seconds=inp.options.tool_retry_seconds),
                    retry_policy=STEP_RETRY,
                    summary=f"provision {tool}",
                )
            except ActivityError as err:
                cause = err.cause
                error_type = cause.type if isinstance(cause, ApplicationError) else ""
                message = (
                    cause.message if isinstance(cause, ApplicationError) else str(cause or err)
                )[:500]
                await self._needs_decision(inp, account, tool, message, error_type or "")
                decision = await self._wait_decision(tool)
                if decision is None:  # the whole enrollment was cancelled
                    return
                await self._run_activity("record_tool_decision", (tool_input, decision), multi=True)
                self._resolve_failure(tool)
                if decision.action == "skip":
                    step.status, step.detail = "skipped", f"skipped by support: {decision.reason}"
                    self._publish()
                    return
                continue
            state.tools[tool] = result
            step.status = "done"
            step.detail = DEVELOPMENT_DETAIL if result.development else ""
            self._first_round.add(tool)
            self._publish()
            return

    async def _needs_decision(
        self, inp: EnrollmentInput, account: AccountResult, tool: str, message: str, etype: str
    ) -> None:
        state = self._state
        assert state is not None
        step = state.step(f"tool:{tool}")
        step.status, step.detail = "failed", message
        if tool not in state.failed_tools:
            state.failed_tools.append(tool)
        state.needs_attention = True
        self._first_round.add(tool)
        self._set_status(EnrollmentStatus.NEEDS_ATTENTION)
        await self._run_activity(
            "flag_for_support",
            ToolFailure(account.enrollment_id, inp.checkout_session_id, tool, message, etype),
        )

    async def _wait_decision(self, tool: str) -> Decision | None:
        await workflow.wait_condition(lambda: tool in self._decisions or self._cancel is not None)
        if self._cancel is not None:
            return None
        return self._decisions[tool]

    def _resolve_failure(self, tool: str) -> None:
        state = self._state
        assert state is not None
        self._decisions.pop(tool, None)
        if tool in state.failed_tools:
            state.failed_tools.remove(tool)
        state.needs_attention = bool(state.failed_tools)
        self._set_status(
            EnrollmentStatus.NEEDS_ATTENTION if state.needs_attention else EnrollmentStatus.ENROLLED
        )

    async def _hold_duplicate(self, account: AccountResult) -> EnrollmentState:
        state = self._state
        assert state is not None
        state.needs_attention = True
        self._set_status(EnrollmentStatus.DUPLICATE)
        await self._run_activity(
            "flag_for_support",
            ToolFailure(
                account.enrollment_id,
                state.checkout_session_id,
                "",
                f"duplicate purchase: already enrolled via {account.duplicate_of}",
                "DuplicatePurchase",
            ),
        )
        state.finished = True
        self._publish(final=True)
        return state

    async def _cancel_enrollment(
        self, inp: EnrollmentInput, account: AccountResult | None, decision: Decision
    ) -> EnrollmentState:
        state = self._state
        assert state is not None
        await self._run_activity(
            "cancel_enrollment",
            CancelInput(
                # 0 before the payment step returned its row: the activity finds it by
                # the Checkout Session id.
                enrollment_id=account.enrollment_id if account else (self._enrollment_id or 0),
                user_id=account.user_id if account else None,
                checkout_session_id=inp.checkout_session_id,
                payment_intent_id=inp.payment_intent_id,
                actor=decision.actor,
                reason=decision.reason,
                refund=decision.refund,
                tools=list(state.tools),
            ),
        )
        state.failed_tools.clear()
        state.failed_steps.clear()
        state.needs_attention = False
        self._set_status(EnrollmentStatus.CANCELLED)
        state.finished = True
        self._publish(final=True)
        return state

    # ---- helpers ---------------------------------------------------------------------

    async def _step(self, key: str, activity: str, arg: object, result_type: type | None = None):  # type: ignore[no-untyped-def]
        return await self._guarded(key, activity, arg, result_type)

    async def _guarded(  # type: ignore[no-untyped-def]
        self, key: str, activity: str, arg: object, result_type: type | None = None,
        mark_step: bool = True,
    ):  # fmt: skip
        """One step within its budget (`options.step_budget_seconds`). Out of budget or
        refused for good, it goes to support like a tool does: the step is failed, the
        enrollment NEEDS_ATTENTION, support is mailed, and the step waits for a decision
        (retry runs it again; cancel ends the enrollment)."""
        state = self._state
        assert state is not None
        step = state.step(key)
        while True:
            if mark_step:
                step.status = "running"
            try:
                result = await self._run_activity(
                    activity, arg, result_type=result_type, budgeted=True
                )
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == "AccessEnded":
                    raise _Ended(
                        str(cause.details[0]) if cause.details else EnrollmentStatus.REVOKED
                    ) from None
                await self._step_needs_decision(key, activity, err)
                decision = await self._wait_decision(key)
                if decision is None:
                    raise _Cancelled() from None
                await self._run_activity(
                    "record_tool_decision",
                    (self._decision_input(key), decision),
                    multi=True,
                )
                self._decisions.pop(key, None)
                state.failed_steps.remove(key)
                step.status, step.detail = "running", ""
                state.needs_attention = bool(state.failed_tools)
                self._set_status(
                    EnrollmentStatus.NEEDS_ATTENTION if state.needs_attention else state_before(key)
                )
                continue
            if mark_step:
                step.status = "done"
                self._publish()
            return result

    async def _step_needs_decision(self, key: str, activity: str, err: ActivityError) -> None:
        state = self._state
        assert state is not None
        cause = err.cause
        error_type = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
        message = (
            f"{activity}: "
            + (cause.message if isinstance(cause, ApplicationError) else str(cause or err))[:480]
        )
        step = state.step(key)
        step.status, step.detail = "failed", message
        if key not in state.failed_steps:
            state.failed_steps.append(key)
        state.needs_attention = True
        self._set_status(EnrollmentStatus.NEEDS_ATTENTION)
        await self._run_activity(
            "flag_for_support",
            ToolFailure(
                self._enrollment_id or 0,
                state.checkout_session_id,
                "",
                message,
                error_type or "",
                step=key,
            ),
        )

    def _decision_input(self, key: str) -> ToolInput:
        state = self._state
        assert state is not None
        return ToolInput(
            self._enrollment_id or 0, state.user_id or 0, state.checkout_session_id, key
        )

    async def _run_activity(  # type: ignore[no-untyped-def]
        self,
        activity: str,
        arg: object,
        result_type: type | None = None,
        multi: bool = False,
        budgeted: bool = False,
    ):
        args = list(arg) if multi else [arg]  # type: ignore[call-overload]
        state_input = self._input
        return await workflow.execute_activity(
            activity,
            args=args,
            result_type=result_type,
            start_to_close_timeout=STEP_TIMEOUT,
            # Bookkeeping (flags, decisions, cancel) retries until it lands; a step has a
            # budget, after which support decides.
            schedule_to_close_timeout=(
                timedelta(seconds=state_input.options.step_budget_seconds) if budgeted else None
            ),
            retry_policy=STEP_RETRY,
        )

    def _set_status(self, status: str) -> None:
        state = self._state
        assert state is not None
        state.status = status
        self._publish()

    def _publish(self, final: bool = False) -> None:
        """Keep what operators see (search attributes, details, memo) in step with state.

        Coalesced: the publisher task flushes once the rest of this workflow task has run,
        so the four tools starting together cost one memo write, not four."""
        if self._coalesce and not final:
            self._dirty = True
            return
        self._flush(final)

    async def _publish_when_changed(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._dirty)
            self._flush()

    def _flush(self, final: bool = False) -> None:
        self._dirty = False
        state = self._state
        assert state is not None
        attributes = (state.status, state.needs_attention, tuple(state.failed_tools))
        memo = {"progress": state.progress(), "student_ready": state.student_ready}
        last_attributes, last_memo = self._published or (None, None)
        moved = attributes != last_attributes
        if not self._coalesce or moved:
            workflow.upsert_search_attributes(
                [
                    SA_STATUS.value_set(state.status),
                    SA_NEEDS_ATTENTION.value_set(state.needs_attention),
                    SA_FAILED_TOOL.value_set(list(state.failed_tools)),
                ]
            )
        lines = [f"**{state.status}** — {state.email} ({state.track})"]
        for s in state.steps:
            mark = {"done": "✔", "skipped": "↷", "failed": "✖", "running": "…"}.get(s.status, "·")
            lines.append(f"- {mark} {s.label}" + (f": {s.detail}" if s.detail else ""))
        if state.failed_tools:
            lines.append(
                "Waiting for support: `onramp-support retry|skip "
                f"{state.checkout_session_id} <tool>`"
            )
        workflow.set_current_details("\n".join(lines))
        milestone = (
            moved or final or memo["student_ready"] != (last_memo or {}).get("student_ready")
        )
        if not self._coalesce or (memo != last_memo and (milestone or not self._milestones)):
            workflow.upsert_memo(memo)
            last_memo = memo
        self._published = (attributes, last_memo)
