"""Refunding an enrollment's payment: the one idempotency key and the duplicate-purchase refund.

Support's cancel, a revocation with a refund and the automatic refund of a duplicate
purchase all refund with `refund_key`, so Stripe refunds one payment at most once.
"""

import sqlalchemy as sa
import stripe
from temporalio.exceptions import ApplicationError

from core import metrics
from core import repository as repo
from core.contracts import EnrollmentStatus
from core.db import session_scope
from core.models import utcnow
from core.payments.stripe_gateway import StripeGateway


def refund_key(checkout_session_id: str) -> str:
    """The one idempotency key for refunding an enrollment (cancel, revoke, duplicates)."""
    return f"refund-{checkout_session_id}"


def refund_enrollment_payment(
    gateway: StripeGateway, payment_intent_id: str, checkout_session_id: str
) -> str:
    """Refund what is left of the payment; '' when Stripe says it is already refunded."""
    try:
        refund = gateway.refund_payment(
            payment_intent_id, idempotency_key=refund_key(checkout_session_id)
        )
    except stripe.InvalidRequestError as err:
        if err.code == "charge_already_refunded":
            return ""
        raise ApplicationError(
            f"Stripe refused the refund ({err.code or err.http_status})",
            type="RefundRefused",
            non_retryable=True,
        ) from None
    return str(refund.get("id") or "")


def refund_duplicate_purchase(
    engine: sa.Engine, gateway: StripeGateway, enrollment_id: int
) -> str | None:
    """settings.auto_refund_duplicates: give the money of a second purchase of an owned track
    back and close that enrollment. Safe to call again: the refund and the audit happen once.

    The enrollment is closed before the refund, so the refund's own charge.refunded webhook
    finds it closed and only records it."""
    with session_scope(engine) as s:
        enrollment = repo.get_enrollment(s, enrollment_id)
        if enrollment is None or not enrollment.payment_intent_id:
            return None
        done = repo.audit_with(s, enrollment_id, "duplicate_refunded")
        enrollment.status = EnrollmentStatus.CANCELLED
        enrollment.needs_attention = False
        enrollment.attention_reason = "duplicate purchase: refunded automatically"
        enrollment.updated_at = utcnow()
        pi, session_id, track = (
            enrollment.payment_intent_id,
            enrollment.checkout_session_id,
            enrollment.track,
        )
    if done:
        return done[0].details.get("refund_id")
    refund_id = refund_enrollment_payment(gateway, pi, session_id)
    with session_scope(engine) as s:
        if not repo.audit_with(s, enrollment_id, "duplicate_refunded"):
            repo.add_audit(
                s, "duplicate_refunded", enrollment_id=enrollment_id, refund_id=refund_id
            )
            metrics.ENROLLMENTS_FAILED.labels(track, "duplicate_refunded").inc()
    return refund_id
