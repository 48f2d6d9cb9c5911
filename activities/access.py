"""AccessActivities: what withdrawing or restoring an enrollment's access does, step by step.

Used by the enrollment's owner (EnrollmentWorkflow) as it handles a refund, a dispute or
support's revoke. Every step is idempotent: a retry, a redelivered webhook or a reset finds
what the earlier run did. Refunds go through `core/payments/refunds.py`, with the
one idempotency key of an enrollment's refund, so a payment is refunded once.
"""

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from temporalio import activity
from temporalio.client import (
    Client,
)
from temporalio.exceptions import ApplicationError

from activities.errors import TOOL_ERRORS, tool_application_error
from core import metrics
from core import repository as repo
from core.contracts import (
    REVOKE,
    AccessChangeInput,
    AccessChangeRecord,
    AccessPlan,
    EnrollmentStatus,
    ToolInput,
    ToolStatus,
)
from core.db import session_scope
from core.models import Enrollment, utcnow
from core.payments.refunds import refund_enrollment_payment
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tools.base import ToolAdapter, ToolSubject
from core.tracks import TRACKS

if TYPE_CHECKING:
    from activities.enrollment import EnrollmentActivities

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 2.0


def no_enrollment(checkout_session_id: str) -> ApplicationError:
    return ApplicationError(
        f"no enrollment for {checkout_session_id}", type="NoEnrollment", non_retryable=True
    )


class AccessActivities:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        adapters: Mapping[str, ToolAdapter],
        stripe_gateway: StripeGateway,
        client: Client,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self.stripe = stripe_gateway
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.refund_enrollment,
            self.suspend_access,
            self.deprovision_tool,
            self.restore_access,
            self.finish_access_change,
        ]

    def _enrollment(self, s: object, checkout_session_id: str) -> Enrollment:
        enrollment = repo.get_enrollment_by_session(s, checkout_session_id)  # type: ignore[arg-type]
        if enrollment is None or enrollment.id is None:
            raise no_enrollment(checkout_session_id)
        return enrollment

    # ---- revoke ----------------------------------------------------------------------

    @activity.defn
    def refund_enrollment(self, inp: AccessChangeInput) -> str:
        with session_scope(self.engine) as s:
            enrollment = self._enrollment(s, inp.checkout_session_id)
            pi, enrollment_id = enrollment.payment_intent_id, enrollment.id
        assert enrollment_id is not None
        if not pi:
            return ""  # granted without payment: nothing to give back
        refund_id = refund_enrollment_payment(self.stripe, pi, inp.checkout_session_id)
        with session_scope(self.engine) as s:
            if refund_id and not repo.audit_exists(
                s,
                enrollment_id,
                "refund_issued",
                refund_id=refund_id,  # type: ignore[arg-type]
            ):
                repo.add_audit(
                    s,
                    "refund_issued",
                    actor=inp.actor,
                    enrollment_id=enrollment_id,
                    refund_id=refund_id,
                    reason=inp.reason,
                )
        return refund_id

    @activity.defn
    def suspend_access(self, inp: AccessChangeInput) -> AccessPlan:
        with session_scope(self.engine) as s:
            enrollment = self._enrollment(s, inp.checkout_session_id)
            assert enrollment.id is not None
            previous = inp.previous_status or enrollment.status
            if previous == EnrollmentStatus.CANCELLED:
                # Support cancelled it (and its tools) already; a refund changes nothing.
                return AccessPlan(
                    enrollment.id, enrollment.user_id, [], False, None, "already cancelled"
                )
            already = enrollment.status == EnrollmentStatus.REVOKED
            enrollment.status = EnrollmentStatus.REVOKED
            enrollment.needs_attention = False
            enrollment.updated_at = utcnow()
            keep: set[str] = set()
            user_active = None
            user = repo.get_user(s, enrollment.user_id) if enrollment.user_id else None
            if user is not None and user.id is not None:
                others = repo.other_active_enrollments(s, user.id, enrollment.id)
                for other in others:
                    keep.update(TRACKS[other.track].tools if other.track in TRACKS else ())
                if not others:
                    user.is_active = False
                    user.enrollment_status = EnrollmentStatus.REVOKED
                    user.updated_at = utcnow()
                    repo.revoke_refresh_tokens(s, user.id)
                user_active = user.is_active
            # Every tool of the track, not only those with a ready account: a revocation that
            # stopped provisioning must remove the half-made ones too (deprovision is
            # idempotent on a subject a tool never had).
            held = [
                r.tool
                for r in repo.tool_accounts_of_enrollment(s, enrollment.id)
                if r.status != ToolStatus.ABSENT
            ]
            track = TRACKS.get(enrollment.track)
            tools = [
                t for t in dict.fromkeys([*(track.tools if track else ()), *held]) if t not in keep
            ]
            if not already:
                repo.add_audit(
                    s,
                    "access_suspended",
                    actor=inp.actor,
                    enrollment_id=enrollment.id,
                    user_id=enrollment.user_id,
                    cause=inp.cause,
                    reason=inp.reason,
                    stripe_object_id=inp.stripe_object_id,
                    previous_status=previous,
                    user_active=user_active,
                )
            note = "already revoked" if already else f"access suspended (was {previous})"
            return AccessPlan(
                enrollment.id, enrollment.user_id, tools, not already, user_active, note
            )

    @activity.defn
    def deprovision_tool(self, inp: ToolInput) -> None:
        adapter = self._adapter(inp.tool)
        try:
            adapter.deprovision(self._subject(inp))
        except TOOL_ERRORS as err:
            raise tool_application_error(err) from None
        with session_scope(self.engine) as s:
            record = repo.get_tool_account(s, inp.user_id, inp.tool)
            if record is not None and record.status != ToolStatus.DISABLED:
                record.status = ToolStatus.DISABLED
                record.updated_at = utcnow()
                repo.add_audit(
                    s,
                    "tool_deprovisioned",
                    enrollment_id=inp.enrollment_id,
                    user_id=inp.user_id,
                    tool=inp.tool,
                )

    def _adapter(self, tool: str) -> ToolAdapter:
        adapter = self.adapters.get(tool)
        if adapter is None:
            raise ApplicationError(
                f"no adapter for tool {tool!r}", type="ToolPermanentError", non_retryable=True
            )
        return adapter

    def _subject(self, inp: ToolInput) -> ToolSubject:
        with session_scope(self.engine) as s:
            user = repo.get_user(s, inp.user_id)
            assert user is not None and user.id is not None
            return ToolSubject(
                user.id, user.username, user.email, user.name, inp.checkout_session_id
            )

    # ---- reinstate -------------------------------------------------------------------

    @activity.defn
    def restore_access(self, inp: AccessChangeInput) -> AccessPlan:
        """Only a revocation caused by disputes alone is undone; a refund stays final."""
        with session_scope(self.engine) as s:
            enrollment = self._enrollment(s, inp.checkout_session_id)
            assert enrollment.id is not None
            plan = AccessPlan(enrollment.id, enrollment.user_id, changed=False)
            if enrollment.status != EnrollmentStatus.REVOKED:
                plan.note = f"not revoked ({enrollment.status}): nothing to reinstate"
                return plan
            suspensions = repo.audit_with(s, enrollment.id, "access_suspended")
            if any(a.details.get("cause") != "dispute" for a in suspensions):
                plan.note = "revoked for a refund or by support: stays revoked"
                return plan
            previous = str(suspensions[0].details.get("previous_status")) if suspensions else ""
            if previous == EnrollmentStatus.READY:
                enrollment.status = EnrollmentStatus.READY
                enrollment.needs_attention = False
            else:
                # Revoked mid-way: its run was cancelled, so a replay has to finish it.
                enrollment.status = EnrollmentStatus.NEEDS_ATTENTION
                enrollment.needs_attention = True
                enrollment.attention_reason = (
                    f"dispute won, but the enrollment was {previous or 'unfinished'} when "
                    "revoked: replay it (onramp-support replay)"
                )
            enrollment.updated_at = utcnow()
            user = repo.get_user(s, enrollment.user_id) if enrollment.user_id else None
            if user is not None:
                user.is_active = True
                user.enrollment_status = enrollment.status
                user.updated_at = utcnow()
            plan.tools = [
                r.tool
                for r in repo.tool_accounts_of_enrollment(s, enrollment.id)
                if r.status == ToolStatus.DISABLED
            ]
            plan.changed = True
            plan.user_active = True if user is not None else None
            plan.note = f"access restored ({enrollment.status})"
            repo.add_audit(
                s,
                "access_restored",
                actor=inp.actor,
                enrollment_id=enrollment.id,
                user_id=enrollment.user_id,
                cause=inp.cause,
                reason=inp.reason,
                stripe_object_id=inp.stripe_object_id,
                status=enrollment.status,
            )
            return plan

    # ---- both ------------------------------------------------------------------------

    @activity.defn
    def finish_access_change(self, rec: AccessChangeRecord) -> str:
        inp = rec.inp
        action = "enrollment_revoked" if inp.action == REVOKE else "enrollment_reinstated"
        with session_scope(self.engine) as s:
            enrollment = self._enrollment(s, inp.checkout_session_id)
            assert enrollment.id is not None
            if rec.failed_tools:
                enrollment.needs_attention = True
                enrollment.attention_reason = (
                    f"{inp.action}: tools not {'de' if inp.action == REVOKE else ''}provisioned: "
                    + ", ".join(rec.failed_tools)
                )[:1000]
                enrollment.updated_at = utcnow()
            # A revocation run again after one that died (REVOKED already, no closing event)
            # closes it now: the event says when the tools, not the status, were done.
            finished_late = inp.action == REVOKE and enrollment.status == EnrollmentStatus.REVOKED
            if (rec.plan.changed or finished_late) and not repo.audit_exists(
                s, enrollment.id, action, stripe_object_id=inp.stripe_object_id, cause=inp.cause
            ):
                repo.add_audit(
                    s,
                    action,
                    actor=inp.actor,
                    enrollment_id=enrollment.id,
                    user_id=enrollment.user_id,
                    cause=inp.cause,
                    reason=inp.reason,
                    stripe_object_id=inp.stripe_object_id,
                    refund_id=rec.refund_id or None,
                    tools=rec.done_tools,
                    failed_tools=rec.failed_tools,
                )
                metrics.ACCESS_CHANGES.labels(inp.action, inp.cause).inc()
            return str(enrollment.status)


def build_ops_activities(
    client: Client, settings: Settings, enrollment: "EnrollmentActivities"
) -> list[Callable[..., Any]]:
    """Support, reconciliation and access-drift activities, sharing the enrollment
    activities' clients."""
    from activities.access_drift import AccessDriftActivities
    from activities.reconcile import ReconcileActivities

    return [
        *AccessActivities(
            settings, enrollment.engine, enrollment.adapters, enrollment.stripe, client
        ).all(),
        *ReconcileActivities(settings, enrollment.engine, enrollment.stripe, client).all(),
        *AccessDriftActivities(
            settings, enrollment.engine, enrollment.adapters, enrollment.mailer
        ).all(),
    ]
