"""EnrollmentWorkflow: one paid Checkout Session becomes exactly one enrollment, and the
run stays its one owner for the rest of its life.

Deterministic orchestration only; every side effect is an activity in `activities/`.
A tool that runs out of retries does not fail the enrollment: the rest goes on, support
is told, and the workflow waits for support's decision (retry, skip or cancel).

Once the enrollment landed or ended, the run stays open for `options.owner_seconds`
(extended by each event) and handles Stripe's later events and support's revoke, one at a
time, in the order they arrived (`lifecycle` signal, delivered with signal-with-start). A
withdrawing event that arrives while tools are still being provisioned stops provisioning
first. Long lives continue as new when Temporal suggests it.
"""

import asyncio
import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.policies import step_retry

with workflow.unsafe.imports_passed_through():
    from core.contracts import (
        DEVELOPMENT_DETAIL,
        DISPUTE_WON,
        REFUNDED,
        REINSTATE,
        REVOKE,
        SA_FAILED_TOOL,
        SA_NEEDS_ATTENTION,
        SA_STATUS,
        SUPPORT_REVOKE,
        WITHDRAWING_EVENTS,
        AccessChangeInput,
        AccessChangeRecord,
        AccessChangeResult,
        AccessPlan,
        AccountResult,
        CancelInput,
        Decision,
        EnrollmentInput,
        EnrollmentRef,
        EnrollmentState,
        EnrollmentStatus,
        LifecycleEvent,
        OwnerCarry,
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


class _Stopped(Exception):
    """A refund, dispute or support's revoke arrived before the enrollment landed: its
    provisioning stops, and the owner's handling of that event withdraws what was made."""


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
# Runs started after this one stay open once they land or end and own the enrollment's later
# events; runs started before it close there (any event they received is handled first).
LIFELONG_OWNER = "lifelong-owner"

# The owner's steps (refund, suspend, deprovision, restore, finish) and their budgets.
OWNER_RETRY = step_retry([*NON_RETRYABLE, "NoEnrollment", "RefundRefused"])
OWNER_STEP_TIMEOUT = timedelta(seconds=60)
# A tool that cannot be reached for this long is reported, not waited for forever.
TOOL_DEADLINE = timedelta(minutes=10)
# Handled event ids and outcomes one run hands the next: redeliveries come within days.
SEEN_KEPT = 500
OUTCOMES_KEPT = 50


@workflow.defn
class EnrollmentWorkflow:
    @workflow.init
    def __init__(self, inp: EnrollmentInput) -> None:
        # The state exists before the first workflow task runs, so an update (a support
        # decision) arriving with the start is validated against it, not refused.
        # The tool list travels in the input; runs started before it read the catalogue.
        track = TRACKS.get(inp.track)
        self._tools = list(inp.tools) if inp.tools else (list(track.tools) if track else [])
        carry = inp.owner
        self._state: EnrollmentState | None = (
            carry.state if carry is not None else initial_state(inp, self._tools)
        )
        # The owner's queue: events in the order they arrived, each id handled once.
        self._events: list[LifecycleEvent] = list(carry.pending) if carry else []
        self._seen: list[str] = list(carry.seen) if carry else []
        self._outcomes: dict[str, AccessChangeResult] = dict(carry.outcomes) if carry else {}
        # A withdrawing event arrived before the enrollment landed: provisioning stops.
        self._stop = False
        # This run withdrew access with every tool gone: a later withdrawing event (the
        # refund support's revoke made, arriving as its own webhook) has nothing to take.
        self._withdrawn = False
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
            lambda: decision.tool not in self._decisions or self._cancel is not None or self._stop
        )
        return self._state

    @workflow.signal
    def lifecycle(self, event: LifecycleEvent) -> None:
        """A later event (Stripe's refund or dispute, support's revoke). Queued once per id and
        handled in arrival order by the run; a withdrawing one stops provisioning at once."""
        if event.event_id in self._seen:
            return
        self._seen.append(event.event_id)
        self._events.append(event)
        state = self._state
        if event.kind in WITHDRAWING_EVENTS and state is not None and not state.finished:
            # No step, tool or attempt starts after this; an attempt in flight ends first
            # (its own timeout bounds it), so nothing is made after the owner deprovisions.
            self._stop = True

    @workflow.update
    async def outcome(self, event_id: str) -> AccessChangeResult:
        """Wait for one queued event to be handled; what it changed."""
        await workflow.wait_condition(lambda: event_id in self._outcomes)
        return self._outcomes[event_id]

    @outcome.validator
    def _validate_outcome(self, event_id: str) -> None:
        if event_id not in self._seen:
            raise ApplicationError(f"no event {event_id!r} for this enrollment")

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
        if inp.owner is not None:
            # Continued, or started by a later event: the enrollment was fulfilled before.
            self._start_publishing()
            await self._own(inp)
        else:
            await self._enroll(inp)
            if workflow.patched(LIFELONG_OWNER):
                await self._own(inp)
            else:
                await self._handle_queued(inp)
        # A decision still being answered gets its answer before the run closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        state = self._state
        assert state is not None
        return state

    def _start_publishing(self) -> None:
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

    async def _enroll(self, inp: EnrollmentInput) -> EnrollmentState:
        self._start_publishing()
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
        except _Stopped:
            return self._stopped()
        except _Cancelled:
            if self._cancel is None:  # a withdrawing event ended the wait, not support
                return self._stopped()
            # Support cancelled while a step waited for their decision.
            return await self._cancel_enrollment(inp, self._account, self._cancel)

    def _stopped(self) -> EnrollmentState:
        """Provisioning stopped for a withdrawing event: the owner handles it next."""
        state = self._state
        assert state is not None
        state.failed_tools.clear()
        state.failed_steps.clear()
        state.needs_attention = False
        state.finished = True
        self._publish(final=True)
        return state

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
            lambda: len(self._first_round) == len(tools) or self._cancel is not None or self._stop
        )
        if self._cancel is None and not self._stop:
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
        if self._stop:
            raise _Stopped()
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
            if self._stop:
                return
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
                if self._stop:
                    return  # stopped for a withdrawing event: the owner deprovisions it
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
        await workflow.wait_condition(
            lambda: tool in self._decisions or self._cancel is not None or self._stop
        )
        if self._cancel is not None or self._stop:
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

    # ---- the owner: later events, one at a time -------------------------------------

    async def _own(self, inp: EnrollmentInput) -> None:
        """Handle queued events in arrival order until the owner's lifetime (extended by each
        event) runs out with nothing queued; continue as new when history grows long."""
        lifetime = inp.options.owner_seconds
        carried = inp.owner.deadline if inp.owner is not None else 0.0
        deadline = carried or workflow.time() + lifetime
        while True:
            while self._events:
                await self._handle(inp, self._events.pop(0))
                deadline = max(deadline, workflow.time() + lifetime)
            # Between events only: an `outcome` caller waits for its event in this run.
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new(inp, deadline)
            remaining = deadline - workflow.time()
            if remaining <= 0:
                return
            try:
                await workflow.wait_condition(lambda: bool(self._events), timeout=remaining)
            except TimeoutError:
                if not self._events:
                    return

    async def _handle_queued(self, inp: EnrollmentInput) -> None:
        """A run started before the lifelong owner: what it received, then it closes."""
        while self._events:
            await self._handle(inp, self._events.pop(0))

    async def _continue_as_new(self, inp: EnrollmentInput, deadline: float) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        state = self._state
        assert state is not None
        kept = list(self._outcomes.items())[-OUTCOMES_KEPT:]
        carry = OwnerCarry(state, deadline, self._seen[-SEEN_KEPT:], list(self._events), dict(kept))
        workflow.continue_as_new(dataclasses.replace(inp, owner=carry))

    async def _handle(self, inp: EnrollmentInput, event: LifecycleEvent) -> None:
        state = self._state
        assert state is not None
        try:
            if event.kind in WITHDRAWING_EVENTS:
                result = await self._revoke(inp, event)
            elif event.kind == DISPUTE_WON:
                result = await self._reinstate(inp, event)
            else:
                result = AccessChangeResult(
                    inp.checkout_session_id, "", state.status, False, note=f"{event.kind}: ignored"
                )
        except ActivityError as err:
            # Refused for good (Stripe refused support's refund, no such enrollment): the
            # caller reads why; access is as it was, since the refund comes first.
            cause = err.cause
            why = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            result = AccessChangeResult(
                inp.checkout_session_id, "", state.status, False, note=f"not done: {why}"[:500]
            )
        self._outcomes[event.event_id] = result
        if len(self._outcomes) > OUTCOMES_KEPT:
            self._outcomes.pop(next(iter(self._outcomes)))
        if result.status and result.status != state.status:
            self._set_status(result.status)
        self._publish(final=True)

    async def _revoke(self, inp: EnrollmentInput, event: LifecycleEvent) -> AccessChangeResult:
        """Withdraw access: refund first when support asked for it, REVOKED in the ledger
        (the login ends), then every tool of the track, half-made ones too."""
        state = self._state
        assert state is not None
        if self._withdrawn and state.status == EnrollmentStatus.REVOKED:
            return AccessChangeResult(
                inp.checkout_session_id, REVOKE, state.status, False, note="already withdrawn"
            )
        cause = {REFUNDED: "refund", SUPPORT_REVOKE: "support"}.get(event.kind, "dispute")
        change = AccessChangeInput(
            inp.checkout_session_id, REVOKE, cause, event.actor, event.reason,
            stripe_object_id=event.stripe_object_id, refund=event.kind == SUPPORT_REVOKE,
        )  # fmt: skip
        refund_id = ""
        if change.refund:
            refund_id = await self._owner_step("refund_enrollment", change, str)
        plan: AccessPlan = await self._owner_step("suspend_access", change, AccessPlan)
        done, failed = await self._each_tool("deprovision_tool", change, plan)
        result = await self._finish(change, plan, refund_id, done, failed)
        self._withdrawn = not failed
        return result

    async def _reinstate(self, inp: EnrollmentInput, event: LifecycleEvent) -> AccessChangeResult:
        """A dispute closed as won gives back what a dispute alone took away."""
        change = AccessChangeInput(
            inp.checkout_session_id, REINSTATE, "dispute", event.actor, event.reason,
            stripe_object_id=event.stripe_object_id,
        )  # fmt: skip
        plan: AccessPlan = await self._owner_step("restore_access", change, AccessPlan)
        done, failed = await self._each_tool("provision_tool", change, plan)
        self._withdrawn = self._withdrawn and not plan.changed
        return await self._finish(change, plan, "", done, failed)

    async def _finish(
        self, change: AccessChangeInput, plan: AccessPlan, refund_id: str,
        done: list[str], failed: list[str],
    ) -> AccessChangeResult:  # fmt: skip
        status: str = await self._owner_step(
            "finish_access_change", AccessChangeRecord(change, plan, refund_id, done, failed), str
        )
        return AccessChangeResult(
            checkout_session_id=change.checkout_session_id,
            action=change.action,
            status=status,
            changed=plan.changed,
            tools=done,
            failed_tools=failed,
            refund_id=refund_id,
            user_active=plan.user_active,
            note=plan.note,
        )

    async def _each_tool(
        self, activity: str, change: AccessChangeInput, plan: AccessPlan
    ) -> tuple[list[str], list[str]]:
        if plan.user_id is None or not plan.tools:
            return [], []
        user_id = plan.user_id

        async def one(tool: str) -> bool:
            try:
                await workflow.execute_activity(
                    activity,
                    ToolInput(plan.enrollment_id, user_id, change.checkout_session_id, tool),
                    result_type=ToolResult if activity == "provision_tool" else None,
                    start_to_close_timeout=timedelta(minutes=5),
                    schedule_to_close_timeout=TOOL_DEADLINE,
                    retry_policy=OWNER_RETRY,
                    summary=f"{activity.split('_')[0]} {tool}",
                )
            except ActivityError:
                return False
            return True

        outcomes = await asyncio.gather(*(one(t) for t in plan.tools))
        done = [t for t, ok in zip(plan.tools, outcomes, strict=True) if ok]
        failed = [t for t, ok in zip(plan.tools, outcomes, strict=True) if not ok]
        return done, failed

    async def _owner_step(self, activity: str, arg: object, result_type: type | None = None):  # type: ignore[no-untyped-def]
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=OWNER_STEP_TIMEOUT,
            retry_policy=OWNER_RETRY,
        )

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
            if self._stop:
                raise _Stopped()
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
                if self._stop:
                    raise _Stopped() from None
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
