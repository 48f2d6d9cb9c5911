"""The one gate every fulfilment passes: Stripe's own copy of the Session, checked against
what our checkout sold, and the database's word on whether access may (still) be given.

Webhooks, verify-session, reconciliation and support replay all call `decide`; none of
them trusts an event body, `metadata.track` or a Session it did not retrieve itself.
Following Stripe's fulfilment guide: retrieve the Session with its line items, then check
it is one of ours (a row our checkout endpoint wrote), paid, in the mode, currency and
amount we asked for, and in the livemode of the key in use.
"""

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
import stripe

from core import repository as repo
from core.cohorts.service import SeatClaim, claim_seat, recovered_hold
from core.contracts import (
    ACCESS_ENDED_STATUSES,
    UNPAID_STATUSES,
    EnrollmentInput,
    EnrollmentOptions,
    EnrollmentStatus,
    workflow_id_for,
)
from core.db import session_scope
from core.mail import Mailer
from core.models import Enrollment, utcnow
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tracks import TRACKS

log = logging.getLogger(__name__)


def enrollment_options(settings: Settings) -> EnrollmentOptions:
    """What every enrollment run is started with, from these settings."""
    return EnrollmentOptions(
        tool_retry_seconds=settings.tool_retry_minutes * 60,
        step_budget_seconds=settings.step_budget_minutes * 60,
        support_email=settings.support_email,
        owner_seconds=settings.enrollment_owner_days * 86_400,
    )


class Verdict(StrEnum):
    FULFIL = "fulfil"  # paid, ours, at our price, never fulfilled: start the enrollment
    FULFILLED = "fulfilled"  # the payment was recorded before: its run (or support) owns it
    UNPAID = "unpaid"  # not paid (yet): nothing to do but wait
    EXPIRED = "expired"  # the Session expired unpaid
    NOT_OURS = "not_ours"  # no Onramp metadata: another product on the same account
    MISMATCH = "mismatch"  # claims to be ours but is not what we sold: recorded, support told
    ENDED = "ended"  # the ledger says access ended (cancelled, revoked, ...): never again
    # Paid, then refunded or disputed before anything was fulfilled: recorded as REVOKED.
    WITHDRAWN = "withdrawn"


@dataclass
class FulfilmentDecision:
    verdict: Verdict
    checkout_session_id: str
    reason: str = ""
    # The workflow input, built from our row (FULFIL and FULFILLED only).
    inp: EnrollmentInput | None = None
    status: str = ""  # the enrollment row's status, when there is one

    @property
    def may_start(self) -> bool:
        return self.verdict == Verdict.FULFIL


def key_livemode(settings: Settings) -> bool:
    """Live keys (`sk_live_`, `rk_live_`) see live objects; every other key, test ones."""
    return settings.stripe_api_key.startswith(("sk_live_", "rk_live_"))


def expected_total(track: str) -> tuple[int, str]:
    """What our checkout sells a track for: amount in the smallest unit, currency."""
    t = TRACKS[track]
    return t.price_cents, t.currency


def judge(
    session: dict[str, Any], row: Enrollment | None, settings: Settings
) -> FulfilmentDecision:
    """Pure: the verdict on Stripe's copy of a Session and our row for it (None: no row)."""
    sid = str(session.get("id"))
    metadata = session.get("metadata") or {}
    if row is None:
        if metadata.get("anonymous_checkout") != "true" and "track" not in metadata:
            return FulfilmentDecision(Verdict.NOT_OURS, sid)
        return FulfilmentDecision(Verdict.MISMATCH, sid, "not created by our checkout endpoint")
    status = row.status
    if status == EnrollmentStatus.PAYMENT_MISMATCH:  # refused before: stays refused
        return FulfilmentDecision(
            Verdict.MISMATCH, sid, row.attention_reason or "refused", status=status
        )
    if status in ACCESS_ENDED_STATUSES:
        return FulfilmentDecision(Verdict.ENDED, sid, f"the enrollment is {status}", status=status)
    if bool(session.get("livemode")) != key_livemode(settings):
        return FulfilmentDecision(
            Verdict.MISMATCH, sid, "livemode differs from the key in use", status=status
        )
    if session.get("status") == "expired":
        return FulfilmentDecision(Verdict.EXPIRED, sid, status=status)
    if session.get("payment_status") != "paid":
        return FulfilmentDecision(
            Verdict.UNPAID, sid, str(session.get("payment_status")), status=status
        )
    problem = _sale_problem(session, row)
    if problem:
        return FulfilmentDecision(Verdict.MISMATCH, sid, problem, status=status)
    inp = _input_from_row(session, row, settings)
    if row.paid_at is not None:
        return FulfilmentDecision(Verdict.FULFILLED, sid, inp=inp, status=status)
    taken_back = _taken_back(session)
    if taken_back:
        # Refunded or disputed before any path fulfilled it: access never starts.
        return FulfilmentDecision(Verdict.WITHDRAWN, sid, taken_back, status=status)
    return FulfilmentDecision(Verdict.FULFIL, sid, inp=inp, status=status)


def _taken_back(session: dict[str, Any]) -> str:
    """Why the money of this paid Session is no longer ours (from its expanded charge)."""
    pi = session.get("payment_intent")
    charge = pi.get("latest_charge") if isinstance(pi, dict) else None
    if not isinstance(charge, dict):
        return ""
    if charge.get("refunded"):
        return f"charge {charge.get('id')} refunded in full before fulfilment"
    if charge.get("disputed"):
        return f"charge {charge.get('id')} disputed before fulfilment"
    return ""


def _sale_problem(session: dict[str, Any], row: Enrollment) -> str:
    """Why this paid Session is not the sale our checkout made for `row`, or ''."""
    if row.track not in TRACKS:
        return f"unknown track {row.track!r}"
    amount, currency = expected_total(row.track)
    if session.get("mode") != "payment":
        return f"mode {session.get('mode')!r}, expected 'payment'"
    if str(session.get("currency") or "").lower() != currency:
        return f"currency {session.get('currency')!r}, expected {currency!r}"
    if session.get("amount_total") != amount:
        return f"amount_total {session.get('amount_total')!r}, expected {amount}"
    track = (session.get("metadata") or {}).get("track")
    if track is not None and track != row.track:
        return f"metadata track {track!r}, our checkout sold {row.track!r}"
    items = session.get("line_items")
    if not isinstance(items, dict) or not isinstance(items.get("data"), list):
        return "line items missing from Stripe's copy"
    data = items["data"]
    if items.get("has_more"):
        return "more line items than Stripe's copy shows"
    if len(data) != 1:
        return f"{len(data)} line items, expected 1"
    item = data[0]
    if item.get("quantity") != 1:
        return f"quantity {item.get('quantity')!r}, expected 1"
    if item.get("amount_total") != amount or str(item.get("currency")).lower() != currency:
        return (
            f"line item {item.get('amount_total')!r} {item.get('currency')!r}, "
            f"expected {amount} {currency!r}"
        )
    return ""


def _input_from_row(
    session: dict[str, Any], row: Enrollment, settings: Settings
) -> EnrollmentInput:
    """Who and what, from our row (what we sold); payment references, from Stripe."""
    pi = session.get("payment_intent")
    if isinstance(pi, dict):
        pi = pi.get("id")
    customer = session.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return EnrollmentInput(
        checkout_session_id=row.checkout_session_id,
        email=row.email.strip().lower(),
        name=row.name[:100],
        track=row.track,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        payment_intent_id=pi,
        customer_id=customer,
        options=enrollment_options(settings),
    )


def decide(
    session_id: str, source: str, gateway: StripeGateway, engine: sa.Engine, settings: Settings
) -> FulfilmentDecision:
    """Retrieve the Session from Stripe and judge it; a mismatch is recorded (and support
    told, once). Blocking: call it from a thread. Raises stripe.StripeError."""
    session = gateway.retrieve_checkout_session(session_id, expand_line_items=True)
    with session_scope(engine) as db:
        row = repo.get_enrollment_by_session(db, session_id)
        if row is None and session.get("recovered_from"):
            row = adopt_recovered(db, session)
        decision = judge(session, row, settings)
        if decision.inp is not None:
            decision.inp.source = source
        newly_refused = decision.verdict == Verdict.MISMATCH and _record_mismatch(
            db, session, row, decision.reason, source
        )
        if decision.verdict == Verdict.WITHDRAWN and row is not None:
            end_before_fulfilment(db, row, decision.reason, source)
            decision = FulfilmentDecision(
                Verdict.ENDED, session_id, decision.reason, status=EnrollmentStatus.REVOKED
            )
        claim: SeatClaim | None = None
        if decision.verdict == Verdict.FULFIL and row is not None:
            # The cohort's seat: the checkout's hold, a free one, the next cohort, or none.
            claim = claim_seat(db, row, settings)
            if not claim.seated:
                refund = _end_sold_out(db, row, claim, source)
                decision = FulfilmentDecision(
                    Verdict.ENDED, session_id, f"cohort {claim.cohort} sold out",
                    status=EnrollmentStatus.CANCELLED,
                )  # fmt: skip
                claim = claim if refund else None
    if newly_refused:
        _alert_support(settings, session_id, session, decision.reason)
    if claim is not None and claim.outcome in ("moved", "sold_out"):
        _settle_sold_out(gateway, engine, settings, session, claim)
    return decision


def _end_sold_out(db: Any, row: Enrollment, claim: SeatClaim, source: str) -> bool:
    """A payment for a cohort with no seat left: the row ends (CANCELLED, never started) and
    the refund follows the commit. True for the one caller that ended it."""
    moved = db.execute(
        sa.update(Enrollment)
        .where(Enrollment.id == row.id)  # type: ignore[arg-type]
        .where(Enrollment.status.in_(UNPAID_STATUSES))  # type: ignore[attr-defined]
        .where(Enrollment.paid_at.is_(None))  # type: ignore[union-attr]
        .values(
            status=EnrollmentStatus.CANCELLED,
            attention_reason=f"paid while cohort {claim.cohort} was sold out: refunded",
            updated_at=utcnow(),
        )
    )
    if not moved.rowcount:
        return False
    repo.add_audit(
        db, "sold_out_payment", enrollment_id=row.id, cohort=claim.cohort, outcome="refund",
        source=source,
    )  # fmt: skip
    log.warning("paid for a sold-out cohort", extra={"workflow_id": row.workflow_id})
    return True


def _settle_sold_out(
    gateway: StripeGateway,
    engine: sa.Engine,
    settings: Settings,
    session: dict[str, Any],
    claim: SeatClaim,
) -> None:
    """After the commit: refund a payment that found no seat (support flagged if Stripe
    refuses), and tell support about every refund or move."""
    sid = str(session.get("id"))
    outcome = f"moved from cohort {claim.moved_from} to {claim.cohort}"
    if claim.outcome == "sold_out":
        pi = session.get("payment_intent")
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        outcome = f"cohort {claim.cohort} sold out: refunded automatically"
        try:
            refund = gateway.refund_payment(str(pi_id), idempotency_key=f"sold-out-{sid}")
            with session_scope(engine) as db:
                row = repo.get_enrollment_by_session(db, sid)
                repo.add_audit(
                    db, "sold_out_refunded", enrollment_id=row.id if row else None,
                    refund_id=refund.get("id"), amount=refund.get("amount"),
                )  # fmt: skip
        except stripe.StripeError as err:
            outcome = f"cohort {claim.cohort} sold out: the refund failed ({type(err).__name__})"
            with session_scope(engine) as db:
                row = repo.get_enrollment_by_session(db, sid)
                if row is not None:
                    row.needs_attention = True
                    row.attention_reason = f"{outcome}; refund it by hand"
                    repo.add_audit(
                        db, "sold_out_refund_failed", enrollment_id=row.id,
                        error=type(err).__name__,
                    )  # fmt: skip
    metadata = session.get("metadata") or {}
    try:
        Mailer(settings).send(
            to=settings.support_email,
            subject="[Onramp] Paid for a sold-out cohort",
            template="support_alert",
            message_key=f"sold-out-{sid}",
            checkout_session_id=sid,
            email=session.get("customer_email") or metadata.get("email") or "",
            track=metadata.get("track") or "",
            tool=None,
            error=outcome,
            workflow_url="",
        )
    except OSError:
        log.exception("could not email support about a sold-out payment")


def adopt_recovered(db: Any, session: dict[str, Any]) -> Enrollment | None:
    """A Session Stripe made from an expired one's recovery link: ours if the expired one
    was (the same person, track and price, a row of its own); its seat is claimed like a
    late payment's. None when the expired Session is not ours."""
    original = repo.get_enrollment_by_session(db, str(session["recovered_from"]))
    if original is None:
        return None
    sid = str(session["id"])
    row = Enrollment(
        checkout_session_id=sid,
        workflow_id=workflow_id_for(sid),
        email=original.email,
        name=original.name,
        track=original.track,
        status=EnrollmentStatus.CHECKOUT_CREATED,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
    )
    try:
        with db.begin_nested():
            db.add(row)
            db.flush()
    except sa.exc.IntegrityError:  # a concurrent delivery adopted it first
        return repo.get_enrollment_by_session(db, sid)
    cohort = recovered_hold(db, original.checkout_session_id, sid)
    repo.add_audit(
        db, "checkout_recovered", actor="stripe", enrollment_id=row.id,
        recovered_from=original.checkout_session_id, cohort=cohort,
    )  # fmt: skip
    return row


def end_before_fulfilment(db: Any, row: Enrollment, reason: str, source: str) -> bool:
    """A payment taken back (refund, dispute) before it was fulfilled: the row is REVOKED,
    so no later event, poll, reconcile or replay starts it. True the first time."""
    if row.status in ACCESS_ENDED_STATUSES or row.paid_at is not None:
        return False
    row.status = EnrollmentStatus.REVOKED
    row.needs_attention = False
    row.attention_reason = reason[:1000]
    row.updated_at = utcnow()
    db.flush()
    repo.add_audit(
        db, "fulfilment_withdrawn", actor="stripe", enrollment_id=row.id, reason=reason,
        source=source,
    )  # fmt: skip
    log.info("payment taken back before fulfilment", extra={"workflow_id": row.workflow_id})
    return True


def _record_mismatch(
    db: Any, session: dict[str, Any], row: Enrollment | None, reason: str, source: str
) -> bool:
    """The refused payment as a row a person can see and act on. True the first time."""
    if row is not None and row.status == EnrollmentStatus.PAYMENT_MISMATCH:
        return False
    if row is None:
        metadata = session.get("metadata") or {}
        details = session.get("customer_details") or {}
        email = str(
            session.get("customer_email") or details.get("email") or metadata.get("email") or ""
        )
        row = Enrollment(
            checkout_session_id=str(session["id"]),
            workflow_id=workflow_id_for(str(session["id"])),
            email=email.strip().lower()[:320],
            name=str(details.get("name") or metadata.get("name") or "")[:100],
            track=str(metadata.get("track") or "")[:8],
        )
        db.add(row)
    row.status = EnrollmentStatus.PAYMENT_MISMATCH
    row.needs_attention = True
    row.attention_reason = f"payment refused: {reason}"[:1000]
    row.amount = session.get("amount_total")
    row.currency = session.get("currency")
    row.updated_at = utcnow()
    db.flush()
    repo.add_audit(
        db,
        "fulfilment_refused",
        actor="system",
        enrollment_id=row.id,
        reason=reason,
        source=source,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        livemode=bool(session.get("livemode")),
    )
    log.warning("fulfilment refused", extra={"workflow_id": row.workflow_id, "reason": reason})
    return True


def _alert_support(
    settings: Settings, session_id: str, session: dict[str, Any], reason: str
) -> None:
    metadata = session.get("metadata") or {}
    try:
        Mailer(settings).send(
            to=settings.support_email,
            subject="[Onramp] Payment refused: not what we sold",
            template="support_alert",
            message_key=f"mismatch-{session_id}",
            checkout_session_id=session_id,
            email=session.get("customer_email") or metadata.get("email") or "",
            track=metadata.get("track") or "",
            tool=None,
            error=f"payment refused: {reason}. Nothing was provisioned; refund or contact "
            "the payer.",
            workflow_url="",
        )
    except OSError:
        # The row and its audit are the record; the list shows it even without the mail.
        log.exception("could not email support about a refused payment")
