"""Support actions, shared by the `onramp-support` CLI and the staff API.

Every action names its actor (`staff:<who>`) and leaves an audit event carrying it:
retry/skip/cancel through the workflow's own activities (`tool_retry`, `tool_skip`,
`enrollment_cancelled`), revoke through the enrollment's owner, the others here. Errors are
`AppError`s with their HTTP status; the CLI prints them, the API renders them as JSON.
Results are plain JSON-ready dicts.
"""

import asyncio
import dataclasses
import logging
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import stripe
from email_validator import EmailNotValidError, validate_email
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from core import repository as repo
from core.cohorts.service import release_seat_now
from core.contracts import (
    ACCESS_ENDED_STATUSES,
    BUDGETED_STEPS,
    CLOSED_STATUSES,
    NOT_PAID_STATUSES,
    OUTCOME_UPDATE,
    SUPPORT_REVOKE,
    AccessChangeResult,
    Decision,
    EnrollmentInput,
    EnrollmentState,
    EnrollmentStatus,
    LifecycleEvent,
    ToolStatus,
    workflow_id_for,
)
from core.db import session_scope
from core.enrollment.runs import (
    query_state,
    send_decision,
    start_enrollment,
    start_options,
    with_tools,
)
from core.errors import AppError, NotFound, Unavailable
from core.mail import Mailer, WelcomeTool, queue_welcome, send_outbox
from core.models import Enrollment
from core.payments.fulfilment import FulfilmentDecision, Verdict, decide, enrollment_options
from core.payments.revocations import EnrollmentKey, access_already_ended, deliver_to_owner
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.temporal import QUERY_TIMEOUT, RPC_TIMEOUT, TemporalUnavailable, workflow_url
from core.tracks import ALL_TOOLS, TRACKS
from support.history import history_line
from workflows.access_drift import AccessDriftWorkflow, DriftInput, DriftResult
from workflows.enrollment import EnrollmentWorkflow
from workflows.reconcile import ReconcileInput, ReconcileResult, ReconcileWorkflow

log = logging.getLogger(__name__)

GRANT_PREFIX = "grant-"
WAIT_SECONDS = 60.0  # how long cancel/revoke wait for their outcome before answering
CANCEL_POLL_SECONDS = 0.3
HISTORY_LINES = 300


class Conflict(AppError):
    status_code = 409
    error = "Conflict"


@dataclass
class ListFilters:
    status: str | None = None
    email: str | None = None
    track: str | None = None
    needs_attention: bool | None = None
    since: datetime | None = None
    limit: int = 100


def parse_since(value: str | date | datetime | None) -> datetime | None:
    """A date (midnight UTC) or an ISO timestamp; naive ones are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise AppError(
                "since must be a date (YYYY-MM-DD) or an ISO timestamp", error="Invalid date"
            ) from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def required(value: str | None, field: str) -> str:
    text = (value or "").strip()
    if not text:
        raise AppError(f"{field} is required", error=f"Missing {field}", field=field)
    if any(unicodedata.category(c) == "Cc" for c in text):
        # One line, and storable: PostgreSQL keeps no NUL, the audit log no line breaks.
        raise AppError(
            f"{field} must be one line without control characters",
            error=f"Invalid {field}",
            field=field,
        )
    return text[:500]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def enrollment_public(e: Enrollment) -> dict[str, Any]:
    return {
        "checkout_session_id": e.checkout_session_id,
        "workflow_id": e.workflow_id,
        "email": e.email,
        "name": e.name,
        "track": e.track,
        "status": e.status,
        "needs_attention": e.needs_attention,
        "attention_reason": e.attention_reason,
        "amount": e.amount,
        "currency": e.currency,
        "payment_intent_id": e.payment_intent_id,
        "user_id": e.user_id,
        "account_created": e.account_created,
        "created_at": _iso(e.created_at),
        "paid_at": _iso(e.paid_at),
        "completed_at": _iso(e.completed_at),
    }


class SupportService:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        client: Client,
        stripe_gateway: StripeGateway,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.stripe = stripe_gateway

    # ---- reads -----------------------------------------------------------------------

    async def list_enrollments(self, filters: ListFilters) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._list, filters)

    def _list(self, f: ListFilters) -> list[dict[str, Any]]:
        with session_scope(self.engine) as s:
            rows = repo.list_enrollments(
                s,
                status=f.status.upper() if f.status else None,
                email=f.email.strip().lower() if f.email else None,
                track=f.track.upper() if f.track else None,
                needs_attention=f.needs_attention,
                since=f.since,
                limit=max(1, min(f.limit, 1000)),
            )
            return [enrollment_public(e) for e in rows]

    async def show(self, session_id: str) -> dict[str, Any]:
        view = await asyncio.to_thread(self._db_view, session_id)
        try:
            workflow = await self._workflow_view(session_id)
        except Unavailable as err:
            if view is None:
                raise
            # The database still tells most of the story while Temporal is down.
            view.update(workflow={"error": err.message}, related_workflows=[])
            return view
        if view is None and workflow is None:
            raise NotFound(f"No enrollment {session_id}", error="Unknown enrollment")
        view = view or {"enrollment": None, "user": None, "tools": [], "timeline": []}
        view["workflow"] = workflow
        email = (view["enrollment"] or {}).get("email")
        view["related_workflows"] = await self._related(email) if email else []
        return view

    def _db_view(self, session_id: str) -> dict[str, Any] | None:
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            if e is None or e.id is None:
                return None
            user = repo.get_user(s, e.user_id) if e.user_id else None
            tools = repo.list_tool_accounts(s, e.user_id) if e.user_id else []
            timeline = [
                {
                    "at": _iso(a.created_at),
                    "actor": a.actor,
                    "action": a.action,
                    "details": a.details,
                }
                for a in repo.list_audit(s, e.id)
            ]
            refunds = [t for t in timeline if t["action"] in ("partial_refund", "refund_issued")]
            return {
                "enrollment": enrollment_public(e),
                "user": None
                if user is None
                else {
                    "id": user.id,
                    "email": user.email,
                    "username": user.username,
                    "role": user.role,
                    "is_active": user.is_active,
                    "enrollment_status": user.enrollment_status,
                    "has_password": user.password_hash is not None,
                },
                "tools": [
                    {
                        "tool": t.tool,
                        "status": t.status,
                        "url": t.url,
                        "development": t.development,
                        "error": t.error,
                        "enrollment_id": t.enrollment_id,
                        "updated_at": _iso(t.updated_at),
                    }
                    for t in tools
                ],
                "refunds": refunds,
                "timeline": timeline,
            }

    def _handle(self, session_id: str) -> WorkflowHandle[Any, EnrollmentState]:
        return self.client.get_workflow_handle_for(
            EnrollmentWorkflow.run, workflow_id_for(session_id)
        )

    async def _describe(self, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription:
        """Raises NotFound or Unavailable; needs no worker."""
        try:
            return await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(
                    f"No workflow {handle.id}", error="Unknown enrollment workflow"
                ) from None
            raise Unavailable(f"Temporal did not answer: {err.message}") from None
        except RuntimeError as err:
            raise Unavailable(f"Temporal is not reachable: {err}") from None

    async def _workflow_view(self, session_id: str) -> dict[str, Any] | None:
        handle = self._handle(session_id)
        try:
            desc = await self._describe(handle)
        except NotFound:
            return None
        status = desc.status.name if desc.status else "UNKNOWN"
        view: dict[str, Any] = {
            "workflow_id": desc.id,
            "run_id": desc.run_id,
            "status": status,
            "task_queue": desc.task_queue,
            "start_time": _iso(desc.start_time),
            "close_time": _iso(desc.close_time),
            "history_length": desc.history_length,
            "summary": await desc.static_summary(),
            "search_attributes": {
                pair.key.name: pair.value for pair in desc.typed_search_attributes
            },
            "ui_url": self.workflow_url(desc.id, desc.run_id),
            "state": None,
        }
        state = await self._state(handle, desc)
        if state is not None:
            view["state"] = {
                "status": state.status,
                "needs_attention": state.needs_attention,
                "failed_tools": state.failed_tools,
                "student_ready": state.student_ready,
                "finished": state.finished,
                "progress": state.progress(),
            }
        else:
            memo = await desc.memo()
            view["state"] = {"progress": memo.get("progress"), "from": "memo"}
        view["history"] = await self._history(handle)
        return view

    async def _state(
        self, handle: WorkflowHandle[Any, EnrollmentState], desc: WorkflowExecutionDescription
    ) -> EnrollmentState | None:
        try:
            if desc.status == WorkflowExecutionStatus.RUNNING:
                return await query_state(handle)
            if desc.status == WorkflowExecutionStatus.COMPLETED:
                return await handle.result(rpc_timeout=QUERY_TIMEOUT)
        except Exception as err:  # noqa: BLE001 (no worker polling, or a timeout: memo instead)
            log.info("state of %s unavailable: %s", handle.id, type(err).__name__)
        return None

    async def _history(self, handle: WorkflowHandle[Any, Any]) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        scheduled: dict[int, str] = {}
        try:
            async for event in handle.fetch_history_events(rpc_timeout=RPC_TIMEOUT):
                line = history_line(event, scheduled)
                if line is not None:
                    lines.append(line)
        except RPCError as err:
            lines.append({"at": None, "event": "history unavailable", "detail": err.message})
        if len(lines) > HISTORY_LINES:
            skipped = len(lines) - HISTORY_LINES
            lines = [*lines[:20], {"at": None, "event": f"… {skipped} more"}, *lines[-280:]]
        return lines

    async def _related(self, email: str) -> list[dict[str, Any]]:
        """Every workflow about this student: their enrollments, each its own owner."""
        quoted = email.replace("\\", "").replace('"', "")
        found = []
        try:
            async for wf in self.client.list_workflows(
                f'EnrollmentEmail = "{quoted}"', limit=20, rpc_timeout=RPC_TIMEOUT
            ):
                found.append(
                    {
                        "workflow_id": wf.id,
                        "run_id": wf.run_id,
                        "type": wf.workflow_type,
                        "status": wf.status.name if wf.status else None,
                        "start_time": _iso(wf.start_time),
                    }
                )
        except RPCError as err:
            log.info("visibility unavailable: %s", err.message)
        return found

    def workflow_url(self, workflow_id: str, run_id: str | None = None) -> str:
        return workflow_url(self.settings, workflow_id, run_id)

    # ---- decisions on a running enrollment -------------------------------------------

    async def retry(self, session_id: str, tool: str, reason: str, actor: str) -> dict[str, Any]:
        return await self._tool_decision("retry", session_id, tool, reason, actor)

    async def skip(self, session_id: str, tool: str, reason: str, actor: str) -> dict[str, Any]:
        return await self._tool_decision("skip", session_id, tool, reason, actor)

    async def _tool_decision(
        self, action: str, session_id: str, tool: str, reason: str, actor: str
    ) -> dict[str, Any]:
        known = (*ALL_TOOLS, *BUDGETED_STEPS) if action == "retry" else ALL_TOOLS
        if tool not in known:
            raise AppError(
                f"unknown tool {tool!r}; one of {', '.join(known)}",
                error="Unknown tool",
                field="tool",
            )
        decision = Decision(action, required(actor, "actor"), required(reason, "reason"), tool)
        state = await self._decide(session_id, decision)
        return {
            "checkout_session_id": session_id,
            "action": action,
            "tool": tool,
            "actor": decision.actor,
            "status": state.status if state else None,
            "failed_tools": state.failed_tools if state else [],
        }

    async def cancel(
        self, session_id: str, reason: str, actor: str, refund: bool = True
    ) -> dict[str, Any]:
        decision = Decision(
            "cancel", required(actor, "actor"), required(reason, "reason"), refund=refund
        )
        await self._decide(session_id, decision)
        try:
            await asyncio.wait_for(self._fulfilment_over(session_id), WAIT_SECONDS)
        except TimeoutError:
            return {"checkout_session_id": session_id, "action": "cancel", "status": "CANCELLING"}
        # The cohort seat goes back now, not at the next sweep.
        await asyncio.to_thread(
            release_seat_now, self.engine, self.settings, session_id, "cancelled"
        )
        view = await asyncio.to_thread(self._db_view, session_id)
        assert view is not None
        cancelled = [t for t in view["timeline"] if t["action"] == "enrollment_cancelled"]
        return {
            "checkout_session_id": session_id,
            "action": "cancel",
            "actor": decision.actor,
            "status": view["enrollment"]["status"],
            "refund_id": cancelled[-1]["details"].get("refund_id") if cancelled else None,
        }

    async def _fulfilment_finished(self, handle: WorkflowHandle[Any, EnrollmentState]) -> bool:
        try:
            state = await query_state(handle)
        except Exception:  # noqa: BLE001 (no worker in time: the update's validator decides)
            return False
        return state is not None and state.finished

    async def _fulfilment_over(self, session_id: str) -> None:
        """Until the run's fulfilment is over (cancelled): the run itself stays open, the
        enrollment's owner for its later events."""
        handle = self._handle(session_id)
        while True:
            try:
                state = await query_state(handle)
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return
                state = None
            except Exception:  # noqa: BLE001 (closed, or no worker in time: look again)
                desc = await self._describe(handle)
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    return
                state = None
            if state is not None and state.finished:
                return
            await asyncio.sleep(CANCEL_POLL_SECONDS)

    async def _decide(self, session_id: str, decision: Decision) -> EnrollmentState | None:
        handle = self._handle(session_id)
        desc = await self._describe(handle)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise Conflict(
                f"The enrollment workflow is {desc.status.name if desc.status else 'closed'}: "
                "nothing waits for a decision (use replay, or revoke for a finished one).",
                error="Not running",
            )
        if await self._fulfilment_finished(handle):
            # The run is open as the enrollment's owner, but its fulfilment is over.
            raise Conflict(
                "The enrollment is fulfilled: nothing waits for a decision (use replay, or "
                "revoke).",
                error="Not running",
            )
        update_id = await asyncio.to_thread(self._decision_id, session_id, decision)
        try:
            return await send_decision(handle, decision, update_id)
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = getattr(cause, "message", None) or str(cause or err)
            raise Conflict(message, error="Decision refused") from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise Conflict("The enrollment workflow has just finished.") from None
            raise Unavailable(f"Temporal did not answer: {err.message}") from None

    def _decision_id(self, session_id: str, decision: Decision) -> str:
        """The update id, derived from what is decided: the same request sent again (a CLI
        retried after a timeout) is the same update, which Temporal applies once. A tool's
        n-th failure is its own round, so a retry after the tool failed again is new."""
        if decision.action == "cancel":
            return "cancel"
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            n = (
                repo.count_audit(s, e.id, "support_notified", tool=decision.tool)
                if e is not None and e.id is not None
                else 0
            )
        return f"{decision.action}-{decision.tool}-{n}"

    # ---- replay ----------------------------------------------------------------------

    async def replay(self, session_id: str, reason: str, actor: str) -> dict[str, Any]:
        """Run the enrollment again from the start. Safe: every activity is idempotent, so
        what is done is found done. One start replaces a running run atomically (Temporal
        terminates it in the same call); the same request again (a CLI retried after a
        timeout) finds the run it started and starts nothing."""
        reason, actor = required(reason, "reason"), required(actor, "actor")
        row = await asyncio.to_thread(self._row, session_id)
        inp = with_tools(await self._replay_input(session_id, row, actor))
        handle = self._handle(session_id)
        previous = None
        try:
            desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
            previous = {"run_id": desc.run_id, "status": desc.status.name if desc.status else None}
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise Unavailable(f"Temporal did not answer: {err.message}") from None
        if previous is not None:
            done = await asyncio.to_thread(
                self._replayed_as, session_id, str(previous["run_id"]), actor, reason
            )
            if done is not None:
                return {**done, "already": True}
        try:
            new = await self.client.start_workflow(
                EnrollmentWorkflow.run,
                inp,
                id=workflow_id_for(session_id),
                task_queue=self.settings.temporal_task_queue,
                # A deliberate second run of the same payment: the one place that allows it.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
                rpc_timeout=RPC_TIMEOUT,
                **start_options(inp),
            )
        except RPCError as err:
            raise Unavailable(f"Temporal did not take the start: {err.message}") from None
        await asyncio.to_thread(
            self._audit,
            session_id,
            "enrollment_replayed",
            actor,
            reason=reason,
            previous_run_id=(previous or {}).get("run_id"),
            previous_run_status=(previous or {}).get("status"),
            run_id=new.result_run_id,
        )
        return self._replay_answer(session_id, actor, new.result_run_id, previous)

    def _replay_answer(
        self, session_id: str, actor: str, run_id: str | None, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        wid = workflow_id_for(session_id)
        return {
            "checkout_session_id": session_id,
            "action": "replay",
            "actor": actor,
            "workflow_id": wid,
            "run_id": run_id,
            "previous_run": previous,
            "ui_url": self.workflow_url(wid, run_id),
        }

    def _replayed_as(
        self, session_id: str, run_id: str, actor: str, reason: str
    ) -> dict[str, Any] | None:
        """The answer of the replay that started `run_id`, when it was this same request."""
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            if e is None or e.id is None:
                return None
            for event in repo.audit_with(s, e.id, "enrollment_replayed"):
                d = event.details
                if d.get("run_id") == run_id and event.actor == actor and d.get("reason") == reason:
                    previous = {
                        "run_id": d.get("previous_run_id"),
                        "status": d.get("previous_run_status"),
                    }
                    return self._replay_answer(session_id, actor, run_id, previous)
        return None

    async def _replay_input(
        self, session_id: str, row: dict[str, Any] | None, actor: str
    ) -> EnrollmentInput:
        source = f"replay:{actor}"
        if session_id.startswith(GRANT_PREFIX):
            if row is None:
                raise NotFound(f"No enrollment {session_id}", error="Unknown enrollment")
            if row["status"] in ACCESS_ENDED_STATUSES:
                raise Conflict(f"Access to this grant ended ({row['status']}).")
            return EnrollmentInput(
                checkout_session_id=session_id,
                email=row["email"],
                name=row["name"],
                track=row["track"],
                amount=0,
                source=source,
                options=enrollment_options(self.settings),
            )
        # Stripe's copy, through the same fulfilment check as every other path.
        decision = await self._fulfilment(session_id, source)
        if decision.verdict in (Verdict.UNPAID, Verdict.EXPIRED):
            raise Conflict("This Checkout Session is not paid: there is nothing to enroll.")
        if decision.verdict == Verdict.NOT_OURS:
            raise Conflict("This Checkout Session is not an Onramp enrollment.")
        if decision.verdict == Verdict.MISMATCH:
            raise Conflict(
                f"This payment is not what we sold ({decision.reason}): refund it instead."
            )
        if decision.verdict == Verdict.ENDED:
            raise Conflict(
                f"Access to this enrollment ended ({decision.status}): its payment is refunded, "
                "disputed or cancelled; grant a new enrollment instead."
            )
        assert decision.inp is not None
        return decision.inp

    async def _fulfilment(self, session_id: str, source: str) -> FulfilmentDecision:
        try:
            return await asyncio.to_thread(
                decide, session_id, source, self.stripe, self.engine, self.settings
            )
        except stripe.InvalidRequestError as err:
            if err.http_status == 404:
                raise NotFound("Stripe has no such Checkout Session") from None
            raise AppError("Stripe refused the lookup", status_code=502) from None
        except stripe.StripeError:
            raise Unavailable("Could not reach Stripe; try again.") from None

    def _row(self, session_id: str) -> dict[str, Any] | None:
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            return None if e is None else enrollment_public(e)

    def _audit(self, session_id: str, action: str, actor: str, **details: Any) -> None:
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            repo.add_audit(
                s,
                action,
                actor=actor,
                enrollment_id=e.id if e else None,
                user_id=e.user_id if e else None,
                checkout_session_id=session_id,
                **details,
            )

    # ---- welcome email ---------------------------------------------------------------

    async def resend_welcome(self, session_id: str, actor: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._resend_welcome, session_id, required(actor, "actor"))

    def _resend_welcome(self, session_id: str, actor: str) -> dict[str, Any]:
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            if e is None or e.id is None:
                raise NotFound(f"No enrollment {session_id}", error="Unknown enrollment")
            if e.user_id is None or e.status in (
                *NOT_PAID_STATUSES,
                *CLOSED_STATUSES,
                EnrollmentStatus.DUPLICATE,
            ):
                raise Conflict(f"No welcome email for an enrollment that is {e.status}.")
            user = repo.get_user(s, e.user_id)
            assert user is not None and user.id is not None
            if user.password_hash is None:
                # Only the newest link works: earlier ones may sit in a lost mailbox.
                repo.expire_welcome_tokens(s, user.id)
            tools = repo.list_tool_accounts(s, user.id)
            track_tools = TRACKS[e.track].tools
            prefix = f"welcome-{e.id}-resend-"
            row = queue_welcome(
                Mailer(self.settings),
                s,
                self.settings,
                enrollment=e,
                user=user,
                tools=[
                    WelcomeTool(t.tool, t.url, t.development)
                    for t in tools
                    if t.tool in track_tools and t.status == ToolStatus.READY
                ],
                pending_tools=[
                    t.tool for t in tools if t.tool in track_tools and t.status == "failed"
                ],
                with_link=user.password_hash is None,
                message_key=f"{prefix}{repo.count_outbox_messages(s, prefix) + 1}",
            )
            s.flush()
            s.expunge(row)
            enrollment_id, user_id = e.id, user.id
        # The new token is committed (and the older ones ended) before the mail goes out.
        send_outbox(Mailer(self.settings), row)
        with session_scope(self.engine) as s:
            repo.mark_outbox_sent(s, row.message_key)
            repo.add_audit(
                s,
                "welcome_email_resent",
                actor=actor,
                enrollment_id=enrollment_id,
                user_id=user_id,
                kind=row.kind,
            )
        return {
            "checkout_session_id": session_id,
            "action": "resend-welcome",
            "actor": actor,
            "to": row.recipient,
            "kind": row.kind,
        }

    # ---- revoke ----------------------------------------------------------------------

    async def revoke(self, session_id: str, reason: str, actor: str) -> dict[str, Any]:
        """Refund through Stripe, then withdraw access: an event for the enrollment's owner,
        handled after whatever it is doing; waits for its outcome."""
        reason, actor = required(reason, "reason"), required(actor, "actor")
        key = await asyncio.to_thread(self._key, session_id)
        if key.status == EnrollmentStatus.REVOKED and await asyncio.to_thread(
            access_already_ended, self.engine, key
        ):
            raise Conflict("This enrollment is already revoked.")
        if key.status in NOT_PAID_STATUSES:
            raise Conflict(f"This enrollment is {key.status}: nothing was paid.")
        wid = workflow_id_for(session_id)
        # One id per revocation of this payment: the same request again is the same event.
        event = LifecycleEvent(SUPPORT_REVOKE, f"support-revoke-{session_id}", actor, reason)
        await asyncio.to_thread(
            self._audit, session_id, "revoke_requested", actor, reason=reason, workflow_id=wid
        )
        try:
            await deliver_to_owner(self.client, self.settings, key, event)
        except TemporalUnavailable:
            raise Unavailable("Temporal did not take the revocation; try again.") from None
        try:
            result: AccessChangeResult = await asyncio.wait_for(
                self._handle(session_id).execute_update(
                    OUTCOME_UPDATE, event.event_id, result_type=AccessChangeResult
                ),
                WAIT_SECONDS,
            )
        except TimeoutError:
            return {"checkout_session_id": session_id, "action": "revoke", "workflow_id": wid}
        except WorkflowUpdateFailedError as err:
            raise Conflict(str(err.cause or err), error="Revocation refused") from None
        await asyncio.to_thread(release_seat_now, self.engine, self.settings, session_id, "revoked")
        return {"action": "revoke", "workflow_id": wid, **dataclasses.asdict(result)}

    def _key(self, session_id: str) -> EnrollmentKey:
        with session_scope(self.engine) as s:
            e = repo.get_enrollment_by_session(s, session_id)
            if e is None or e.id is None:
                raise NotFound(f"No enrollment {session_id}", error="Unknown enrollment")
            return EnrollmentKey(
                e.id, e.checkout_session_id, e.payment_intent_id, e.email, e.track, e.status,
                e.name,
            )  # fmt: skip

    # ---- grant -----------------------------------------------------------------------

    async def grant(
        self, email: str, name: str, track: str, reason: str, actor: str
    ) -> dict[str, Any]:
        """Enroll without payment; the key `grant-<uuid>` stands where a Session id would."""
        inp = await asyncio.to_thread(
            self._create_grant,
            email,
            required(name, "name"),
            track,
            required(reason, "reason"),
            required(actor, "actor"),
        )
        try:
            await start_enrollment(self.client, self.settings, inp)
        except TemporalUnavailable:
            # The row and its audit stay: `replay <id>` starts it once Temporal is back.
            raise Unavailable(
                f"Granted as {inp.checkout_session_id}, but Temporal did not take the start: "
                "replay it."
            ) from None
        return {
            "checkout_session_id": inp.checkout_session_id,
            "workflow_id": workflow_id_for(inp.checkout_session_id),
            "action": "grant",
            "actor": actor,
            "email": inp.email,
            "track": inp.track,
            "ui_url": self.workflow_url(workflow_id_for(inp.checkout_session_id)),
        }

    def _create_grant(
        self, email: str, name: str, track: str, reason: str, actor: str
    ) -> EnrollmentInput:
        try:
            email = validate_email(email, check_deliverability=False).normalized.lower()
        except EmailNotValidError as err:
            raise AppError(str(err), error="Invalid email", field="email") from None
        track = track.upper()
        if track not in TRACKS:
            raise AppError(
                f"track must be one of {', '.join(TRACKS)}", error="Invalid track", field="track"
            )
        key = f"{GRANT_PREFIX}{uuid.uuid4().hex}"
        with session_scope(self.engine) as s:
            user = repo.get_user_by_email(s, email)
            if user is not None and user.id is not None:
                other = repo.find_active_enrollment(s, user.id, track, key)
                if other is not None:
                    raise Conflict(
                        f"{email} is already enrolled in {track} ({other.checkout_session_id})."
                    )
            enrollment = Enrollment(
                checkout_session_id=key,
                workflow_id=workflow_id_for(key),
                email=email,
                name=name[:100],
                track=track,
                status=EnrollmentStatus.CHECKOUT_CREATED,
                amount=0,
            )
            s.add(enrollment)
            s.flush()
            repo.add_audit(
                s, "enrollment_granted", actor=actor, enrollment_id=enrollment.id, reason=reason
            )
        return EnrollmentInput(
            checkout_session_id=key,
            email=email,
            name=name[:100],
            track=track,
            amount=0,
            currency=TRACKS[track].currency,
            source=f"grant:{actor}",
            options=enrollment_options(self.settings),
        )

    # ---- staff accounts, reconciliation ----------------------------------------------

    def create_staff(self, email: str, name: str, password: str, actor: str) -> dict[str, Any]:
        from core.accounts.service import create_staff_user

        actor = required(actor, "actor")
        with session_scope(self.engine) as s:
            user = create_staff_user(s, email, name, password)
            # create_staff_user audits with a generic actor; name the person who did it.
            for event in s.new:
                if getattr(event, "action", None) == "staff_created":
                    event.actor = actor  # type: ignore[attr-defined]
            return {"action": "create-staff", "user_id": user.id, "email": user.email}

    async def reconcile(self, actor: str, lookback_hours: float | None = None) -> dict[str, Any]:
        """One reconciliation run now, outside the Schedule; waits for its result."""
        inp = ReconcileInput(
            lookback_hours=lookback_hours or self.settings.reconcile_lookback_hours,
            actor=required(actor, "actor"),
        )
        result: ReconcileResult = await self._run_now(
            ReconcileWorkflow.run,
            inp,
            "reconcile-manual",
            timedelta(minutes=15),
            f"Reconcile run requested by {inp.actor}",
        )
        return {"action": "reconcile", "actor": inp.actor, **dataclasses.asdict(result)}

    async def drift(self, actor: str, dry_run: bool = False) -> dict[str, Any]:
        """One access-drift run now, outside the Schedule; waits for its result."""
        inp = DriftInput(
            dry_run=dry_run,
            actor=required(actor, "actor"),
            max_changes=self.settings.access_drift_max_changes,
        )
        result: DriftResult = await self._run_now(
            AccessDriftWorkflow.run,
            inp,
            "access-drift-manual",
            timedelta(hours=1),
            f"Access drift {'dry run ' if dry_run else ''}by {inp.actor}",
        )
        return {"action": "drift", **dataclasses.asdict(result)}

    async def _run_now(
        self, run: Any, inp: Any, id_prefix: str, run_timeout: timedelta, summary: str
    ) -> Any:
        """A scheduled job's workflow started now, outside its Schedule; waits for the result."""
        try:
            return await self.client.execute_workflow(
                run,
                inp,
                id=f"{id_prefix}-{uuid.uuid4().hex[:12]}",
                task_queue=self.settings.temporal_task_queue,
                execution_timeout=run_timeout,
                static_summary=summary,
            )
        except RPCError as err:
            raise Unavailable(f"Temporal did not answer: {err.message}") from None
