"""EnrollmentActivities: every side effect of an enrollment, each one idempotent.

Activities are plain `def`s (they call blocking SDKs) run in the worker's thread pool.
Re-running any of them, after a crash, a retry or a `temporal workflow reset`, finds
what the earlier run did and does not do it twice.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import TOOL_ERRORS, tool_application_error
from core import metrics
from core import repository as repo
from core.accounts.security import revoke_user_sessions
from core.contracts import (
    ACCESS_ENDED_STATUSES,
    DEVELOPMENT_DETAIL,
    UNPAID_STATUSES,
    AccountResult,
    CancelInput,
    Decision,
    EnrollmentInput,
    EnrollmentRef,
    EnrollmentStatus,
    StatusInput,
    Step,
    ToolFailure,
    ToolInput,
    ToolResult,
    ToolStatus,
    WelcomeEmailInput,
    workflow_id_for,
)
from core.crypto import SecretBox
from core.db import session_scope
from core.mail import Mailer, WelcomeTool, queue_welcome, send_outbox
from core.models import Enrollment, ToolAccountRecord, User, utcnow
from core.payments.refunds import refund_duplicate_purchase, refund_enrollment_payment
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.temporal import workflow_url
from core.tools.base import ToolAdapter, ToolPermanentError, ToolSubject, ToolTransientError
from core.tracks import TOOL_LABELS, TRACKS

log = logging.getLogger(__name__)

# Steps an activity settles by succeeding, as EnrollmentWorkflow marks them once its result
# comes back: sent with the notification, so the success page shows them at commit.
DONE_PAYMENT = Step("payment", "", "done")
DONE_ACCOUNT = Step("account", "", "done")
DONE_PROJECT = Step("project", "", "done")


def invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidEnrollment", non_retryable=True)


class EnrollmentActivities:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        adapters: Mapping[str, ToolAdapter],
        mailer: Mailer,
        stripe: StripeGateway,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self.mailer = mailer
        self.stripe = stripe
        self.box = SecretBox(settings.tool_secret_key)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.record_payment,
            self.create_account,
            self.mark_enrolled,
            self.provision_tool,
            self.flag_for_support,
            self.record_tool_decision,
            self.unlock_first_project,
            self.send_welcome_email,
            self.set_enrollment_status,
            self.cancel_enrollment,
        ]

    # ---- payment and account ---------------------------------------------------------

    @activity.defn
    def record_payment(self, inp: EnrollmentInput) -> int:
        if inp.track not in TRACKS:
            raise invalid(f"unknown track {inp.track!r}")
        email = inp.email.strip().lower()
        if "@" not in email:
            raise invalid("the payment carries no usable email")
        with session_scope(self.engine) as s:
            enrollment = repo.get_enrollment_by_session(s, inp.checkout_session_id)
            if enrollment is None:
                # Every start path passes core/payments/fulfilment.py, which needs our row; only a
                # run started directly (tests, scripts) gets here without one.
                enrollment = Enrollment(
                    checkout_session_id=inp.checkout_session_id,
                    workflow_id=workflow_id_for(inp.checkout_session_id),
                    email=email,
                    name=inp.name.strip()[:100] or email,
                    track=inp.track,
                )
                s.add(enrollment)
                s.flush()
            if enrollment.status in ACCESS_ENDED_STATUSES:
                # Refunded, disputed or closed while this run was on its way: the ledger wins.
                raise ApplicationError(
                    f"access ended: the enrollment is {enrollment.status}",
                    str(enrollment.status),
                    type="AccessEnded",
                    non_retryable=True,
                )
            if enrollment.paid_at is None:
                enrollment.paid_at = utcnow()
                metrics.count_payment(inp.track, inp.checkout_session_id)
                repo.add_audit(
                    s,
                    "payment_confirmed",
                    actor="stripe",
                    enrollment_id=enrollment.id,
                    amount=inp.amount,
                    currency=inp.currency,
                    source=inp.source,
                )
            if enrollment.status in UNPAID_STATUSES:
                enrollment.status = EnrollmentStatus.PAID
            enrollment.amount = inp.amount
            enrollment.currency = inp.currency
            enrollment.payment_intent_id = inp.payment_intent_id or enrollment.payment_intent_id
            enrollment.stripe_customer_id = inp.customer_id or enrollment.stripe_customer_id
            enrollment.updated_at = utcnow()
            assert enrollment.id is not None
            repo.bump_progress(s, enrollment.id, DONE_PAYMENT)
            return enrollment.id

    @activity.defn
    def create_account(self, inp: EnrollmentInput) -> AccountResult:
        try:
            return self._create_account(inp)
        except IntegrityError:
            # Another payment created this email's account a moment ago: attach to it.
            return self._create_account(inp)

    def _create_account(self, inp: EnrollmentInput) -> AccountResult:
        with session_scope(self.engine) as s:
            enrollment = repo.get_enrollment_by_session(s, inp.checkout_session_id)
            if enrollment is None or enrollment.id is None:
                raise invalid("record_payment must run first")
            if enrollment.user_id is not None:
                user = repo.get_user(s, enrollment.user_id)
                assert user is not None
                repo.bump_progress(s, enrollment.id, DONE_ACCOUNT)
                return self._account_result(s, enrollment, user)
            user = repo.get_user_by_email(s, enrollment.email)
            if user is None:
                user = User(
                    email=enrollment.email,
                    username=repo.new_username(s, enrollment.email),
                    name=enrollment.name,
                    password_hash=None,  # unusable until the student sets one
                    track=enrollment.track,
                    enrollment_status=EnrollmentStatus.PAID,
                )
                s.add(user)
                s.flush()
                enrollment.account_created = True
                repo.add_audit(
                    s,
                    "account_created",
                    enrollment_id=enrollment.id,
                    user_id=user.id,
                    username=user.username,
                )
            else:
                repo.add_audit(s, "account_attached", enrollment_id=enrollment.id, user_id=user.id)
                if not user.email_proven and user.id is not None:
                    # Nobody proved this address yet: the sessions held so far came from
                    # a payment, maybe not the owner's. End them; the owner gets a link.
                    revoke_user_sessions(s, user.id)
                    repo.add_audit(
                        s, "unproven_sessions_ended", enrollment_id=enrollment.id, user_id=user.id
                    )
            enrollment.user_id = user.id
            enrollment.updated_at = utcnow()
            repo.bump_progress(s, enrollment.id, DONE_ACCOUNT)
            return self._account_result(s, enrollment, user)

    def _account_result(self, s: object, enrollment: Enrollment, user: User) -> AccountResult:
        assert enrollment.id is not None and user.id is not None
        other = repo.find_active_enrollment(
            s,  # type: ignore[arg-type]
            user.id,
            enrollment.track,
            enrollment.checkout_session_id,
        )
        return AccountResult(
            enrollment_id=enrollment.id,
            user_id=user.id,
            username=user.username,
            account_created=enrollment.account_created,
            duplicate_of=other.checkout_session_id if other else None,
            email=user.email,
            name=user.name,
        )

    @activity.defn
    def mark_enrolled(self, ref: EnrollmentRef) -> None:
        with session_scope(self.engine) as s:
            enrollment = repo.get_enrollment(s, ref.enrollment_id)
            user = repo.get_user(s, ref.user_id)
            assert enrollment is not None and user is not None
            if enrollment.payment_verified:
                return
            enrollment.payment_verified = True
            enrollment.status = EnrollmentStatus.ENROLLED
            enrollment.updated_at = utcnow()
            user.enrollment_status = EnrollmentStatus.ENROLLED
            user.payment_verified = True
            user.is_active = True
            user.track = user.track or enrollment.track
            user.updated_at = utcnow()
            repo.add_audit(s, "enrolled", enrollment_id=enrollment.id, user_id=user.id)
            # The workflow starts every tool of the track as this completes.
            track = TRACKS.get(enrollment.track)
            running = [Step(f"tool:{t}", "", "running") for t in (track.tools if track else ())]
            repo.bump_progress(s, ref.enrollment_id, *running)

    # ---- tools -----------------------------------------------------------------------

    def _subject(self, user_id: int, checkout_session_id: str) -> ToolSubject:
        with session_scope(self.engine) as s:
            user = repo.get_user(s, user_id)
            assert user is not None and user.id is not None
            return ToolSubject(user.id, user.username, user.email, user.name, checkout_session_id)

    @activity.defn
    def provision_tool(self, inp: ToolInput) -> ToolResult:
        adapter = self.adapters.get(inp.tool)
        if adapter is None:
            raise ApplicationError(
                f"no adapter for tool {inp.tool!r}", type="ToolPermanentError", non_retryable=True
            )
        subject = (
            ToolSubject(inp.user_id, inp.username, inp.email, inp.name, inp.checkout_session_id)
            if inp.username and inp.email
            else self._subject(inp.user_id, inp.checkout_session_id)
        )
        attempt = activity.info().attempt
        try:
            account = adapter.provision(subject, progress=lambda note: activity.heartbeat(note))
        except TOOL_ERRORS as err:
            if isinstance(err, ToolTransientError):
                log.warning("tool %s attempt %d failed: %s", inp.tool, attempt, err)
            raise tool_application_error(err) from None
        with session_scope(self.engine) as s:
            record = repo.get_tool_account(s, inp.user_id, inp.tool)
            if record is None:
                record = ToolAccountRecord(
                    user_id=inp.user_id, tool=inp.tool, status=ToolStatus.READY
                )
                s.add(record)
            record.enrollment_id = inp.enrollment_id
            record.status = account.status
            record.url = account.url
            record.username = account.username
            record.development = account.development
            record.details = dict(account.details)
            record.error = None
            if account.secret is not None:
                record.secret_encrypted = self.box.encrypt(account.secret)
            record.updated_at = utcnow()
            repo.add_audit(
                s,
                "tool_provisioned",
                enrollment_id=inp.enrollment_id,
                user_id=inp.user_id,
                tool=inp.tool,
                attempt=attempt,
                development=account.development,
            )
            detail = DEVELOPMENT_DETAIL if account.development else ""
            repo.bump_progress(s, inp.enrollment_id, Step(f"tool:{inp.tool}", "", "done", detail))
        metrics.TOOL_PROVISION_SECONDS.labels(inp.tool).observe(
            metrics.seconds_since(activity.info().started_time)
        )
        return ToolResult(inp.tool, account.status, account.url, account.development)

    @activity.defn
    def flag_for_support(self, failure: ToolFailure) -> None:
        what = failure.tool or failure.step  # the tool, or the step out of its budget
        with session_scope(self.engine) as s:
            enrollment = self._enrollment_of(s, failure.enrollment_id, failure.checkout_session_id)
            assert enrollment.id is not None
            failure.enrollment_id = enrollment.id
            retried = "tool_retry" if failure.tool else "step_retry"
            # The n-th failure of a tool follows n-1 retry decisions; one alert for each.
            nth = 1 + repo.count_audit(s, failure.enrollment_id, retried, tool=what)
            sent = repo.count_audit(s, failure.enrollment_id, "support_notified", tool=what)
            already = sent >= nth
            enrollment.needs_attention = True
            enrollment.attention_reason = f"{what or 'enrollment'}: {failure.error}"[:1000]
            enrollment.status = (
                EnrollmentStatus.DUPLICATE
                if failure.error_type == "DuplicatePurchase"
                else EnrollmentStatus.NEEDS_ATTENTION
            )
            enrollment.updated_at = utcnow()
            if failure.tool and enrollment.user_id is not None:
                record = repo.get_tool_account(s, enrollment.user_id, failure.tool)
                if record is None:
                    record = ToolAccountRecord(
                        user_id=enrollment.user_id, tool=failure.tool, status="failed"
                    )
                    s.add(record)
                record.status, record.error = "failed", failure.error[:2000]
                record.enrollment_id = enrollment.id
                record.updated_at = utcnow()
            repo.bump_progress(s, failure.enrollment_id)
            email, track = enrollment.email, enrollment.track
        if failure.error_type == "DuplicatePurchase" and self.settings.auto_refund_duplicates:
            refund_duplicate_purchase(self.engine, self.stripe, failure.enrollment_id)
        if already:
            return
        metrics.count_failure(track, failure.error_type)
        self.mailer.send(
            to=self.settings.support_email,
            subject=f"[Onramp] Enrollment needs attention: {email} ({track})",
            template="support_alert",
            message_key=f"support-{failure.enrollment_id}-{what or 'enrollment'}-{nth}",
            checkout_session_id=failure.checkout_session_id,
            email=email,
            track=track,
            tool=what,
            error=failure.error,
            workflow_url=self._workflow_url(failure.checkout_session_id),
        )
        with session_scope(self.engine) as s:
            repo.add_audit(
                s,
                "support_notified",
                enrollment_id=failure.enrollment_id,
                tool=what,
                error=failure.error[:500],
                error_type=failure.error_type,
            )

    @activity.defn
    def record_tool_decision(self, inp: ToolInput, decision: Decision) -> None:
        """Support's decision on a tool, or on a step out of its budget (`inp.tool` is then
        the step's key and `inp.user_id` may be 0, before the account)."""
        is_tool = inp.tool in TOOL_LABELS
        with session_scope(self.engine) as s:
            enrollment = self._enrollment_of(s, inp.enrollment_id, inp.checkout_session_id)
            assert enrollment.id is not None
            inp.enrollment_id = enrollment.id
            record = repo.get_tool_account(s, inp.user_id, inp.tool) if is_tool else None
            if record is not None and decision.action == "skip":
                record.status = "skipped"
                record.updated_at = utcnow()
            repo.add_audit(
                s,
                f"{'tool' if is_tool else 'step'}_{decision.action}",
                actor=decision.actor,
                enrollment_id=inp.enrollment_id,
                user_id=inp.user_id or None,
                tool=inp.tool,
                reason=decision.reason,
            )
            repo.bump_progress(s, inp.enrollment_id)

    # ---- project, email, status ------------------------------------------------------

    @activity.defn
    def unlock_first_project(self, ref: EnrollmentRef) -> int:
        with session_scope(self.engine) as s:
            enrollment = repo.get_enrollment(s, ref.enrollment_id)
            assert enrollment is not None
            project = repo.get_first_project(s, enrollment.track)
            if project is None or project.id is None:
                raise invalid(f"track {enrollment.track} has no first project")
            if repo.unlock_project(s, ref.user_id, project.id):
                repo.add_audit(
                    s,
                    "project_unlocked",
                    enrollment_id=ref.enrollment_id,
                    user_id=ref.user_id,
                    project=project.slug,
                )
            repo.bump_progress(s, ref.enrollment_id, DONE_PROJECT)
            return project.id

    @activity.defn
    def send_welcome_email(self, inp: WelcomeEmailInput) -> None:
        key = f"welcome-{inp.enrollment_id}"
        with session_scope(self.engine) as s:
            if repo.audit_exists(s, inp.enrollment_id, "welcome_email_sent"):
                repo.bump_progress(s, inp.enrollment_id)
                return
            row = repo.get_outbox_message(s, key)
            if row is None:
                enrollment = repo.get_enrollment(s, inp.enrollment_id)
                user = repo.get_user(s, inp.user_id)
                assert enrollment is not None and user is not None
                row = queue_welcome(
                    self.mailer,
                    s,
                    self.settings,
                    enrollment=enrollment,
                    user=user,
                    tools=[WelcomeTool(t.tool, t.url, t.development) for t in inp.tools],
                    pending_tools=list(inp.pending_tools),
                    # Until the owner proves the address, every purchase mails them a link.
                    with_link=not user.email_proven,
                    message_key=key,
                )
            s.flush()
            s.expunge(row)
        # Committed: the token works before any copy of the message exists. A retry (after
        # a crash on either side of SMTP's answer) sends these same bytes again.
        send_outbox(self.mailer, row)
        with session_scope(self.engine) as s:
            repo.mark_outbox_sent(s, key)
            enrollment = repo.get_enrollment(s, inp.enrollment_id)
            assert enrollment is not None
            # The auto-login window opens when the student can land, ready or not.
            enrollment.completed_at = enrollment.completed_at or utcnow()
            repo.add_audit(
                s,
                "welcome_email_sent",
                enrollment_id=inp.enrollment_id,
                user_id=inp.user_id,
                kind=row.kind,
            )
            # Last: the row stays unlocked while the mail goes out.
            repo.bump_progress(s, inp.enrollment_id)

    @activity.defn
    def set_enrollment_status(self, inp: StatusInput) -> None:
        with session_scope(self.engine) as s:
            enrollment = repo.get_enrollment(s, inp.enrollment_id)
            assert enrollment is not None
            repo.bump_progress(s, inp.enrollment_id)
            if enrollment.status == inp.status:
                return
            enrollment.status = inp.status
            enrollment.needs_attention = inp.needs_attention
            if inp.status == EnrollmentStatus.READY:
                metrics.observe_ready(enrollment.track, enrollment.paid_at)
                enrollment.attention_reason = None
                enrollment.completed_at = enrollment.completed_at or utcnow()
            enrollment.updated_at = utcnow()
            repo.add_audit(s, "status_changed", enrollment_id=inp.enrollment_id, status=inp.status)

    @activity.defn
    def cancel_enrollment(self, inp: CancelInput) -> None:
        # CANCELLED first: the refund's own charge.refunded webhook may arrive before this
        # activity ends, and must find a cancelled enrollment, not one to revoke.
        with session_scope(self.engine) as s:
            enrollment = self._enrollment_of(s, inp.enrollment_id, inp.checkout_session_id)
            assert enrollment.id is not None
            inp.enrollment_id = enrollment.id
            enrollment.status = EnrollmentStatus.CANCELLED
            enrollment.needs_attention = False
            enrollment.updated_at = utcnow()
            tools = self._tools_to_end(s, enrollment, inp.tools)
        refund_id = None
        if inp.refund and inp.payment_intent_id:
            # Stripe's refusals are classified once: already refunded is done, others go to
            # support (non-retryable), a network error is retried.
            refund_id = (
                refund_enrollment_payment(
                    self.stripe, inp.payment_intent_id, inp.checkout_session_id
                )
                or None
            )
        failed: list[str] = []
        if inp.user_id is not None:
            subject = self._subject(inp.user_id, inp.checkout_session_id)
            for tool in tools:
                adapter = self.adapters.get(tool)
                if adapter is None:
                    continue
                try:
                    adapter.deprovision(subject)
                except ToolTransientError as err:
                    raise ApplicationError(str(err), type="ToolTransientError") from None
                except ToolPermanentError as err:
                    log.error("cancel: %s not deprovisioned: %s", tool, err)
                    failed.append(tool)
        with session_scope(self.engine) as s:
            if inp.user_id is not None:
                for record in repo.list_tool_accounts(s, inp.user_id):
                    if record.tool in tools and record.tool not in failed:
                        record.status = ToolStatus.DISABLED
                        record.updated_at = utcnow()
            closed = repo.get_enrollment(s, inp.enrollment_id)
            if failed and closed is not None:
                closed.needs_attention = True
                closed.attention_reason = "cancel: tools not deprovisioned: " + ", ".join(failed)
            repo.add_audit(
                s,
                "enrollment_cancelled",
                actor=inp.actor,
                enrollment_id=inp.enrollment_id,
                user_id=inp.user_id,
                reason=inp.reason,
                refund_id=refund_id,
                tools=tools,
                failed_tools=failed,
            )
            repo.bump_progress(s, inp.enrollment_id)

    @staticmethod
    def _enrollment_of(s: Session, enrollment_id: int, checkout_session_id: str) -> Enrollment:
        """By id; by the Checkout Session before the payment step returned the id (0)."""
        enrollment = (
            repo.get_enrollment(s, enrollment_id)
            if enrollment_id
            else repo.get_enrollment_by_session(s, checkout_session_id)
        )
        if enrollment is None:
            raise invalid(f"no enrollment for {checkout_session_id}")
        return enrollment

    @staticmethod
    def _tools_to_end(s: Session, enrollment: Enrollment, ready: list[str]) -> list[str]:
        """Every tool the enrollment may have touched, not only those that became ready: a
        half-made container or user stays otherwise. Tools another active enrollment of the
        same student holds stay theirs."""
        track = TRACKS.get(enrollment.track)
        tools = list(dict.fromkeys([*ready, *(track.tools if track else ())]))
        if enrollment.user_id is None or enrollment.id is None:
            return tools
        keep: set[str] = set()
        for other in repo.other_active_enrollments(s, enrollment.user_id, enrollment.id):
            keep.update(TRACKS[other.track].tools if other.track in TRACKS else ())
        return [t for t in tools if t not in keep]

    def _workflow_url(self, checkout_session_id: str) -> str:
        return workflow_url(self.settings, workflow_id_for(checkout_session_id))
