"""The webhook table: each Stripe event type Onramp acts on, mapped to its domain's handler.

Checkout Session events are the enrollment's own (the fulfilment gate, then one start of
the run keyed by the Session id); refunds and disputes are payments' (`REVOCATION_HANDLERS`).
An event type not in the table is acknowledged and ignored.
"""

from functools import partial
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
import stripe

from core import repository as repo
from core.cohorts.service import checkout_expired
from core.contracts import EnrollmentStatus
from core.db import session_scope
from core.enrollment.runs import find_enrollment, start_enrollment
from core.payments.events import EventContext, EventHandler, StripeUnreachable
from core.payments.fulfilment import FulfilmentDecision, Verdict, decide
from core.payments.revocations import REVOCATION_HANDLERS
from core.temporal import TemporalUnavailable

# A webhook's outcome for each verdict that does not start anything.
VERDICT_OUTCOMES = {
    Verdict.UNPAID: "no_paid_session",
    Verdict.EXPIRED: "expired",
    Verdict.NOT_OURS: "not_an_enrollment",
    Verdict.MISMATCH: "refused",
    Verdict.ENDED: "access_ended",
}


async def _in_thread(func: Any, *args: Any) -> Any:
    # Blocking DB and Stripe calls run in the thread pool: the event loop keeps acknowledging.
    return await anyio.to_thread.run_sync(partial(func, *args))


async def on_session_paid(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """checkout.session.completed / async_payment_succeeded: fulfil once, if the gate agrees.
    The body only names the Session: what was paid is read from Stripe itself."""
    decision = await _decide(obj["id"], f"webhook:{etype}", ctx)
    if decision.verdict == Verdict.UNPAID and etype == "checkout.session.completed":
        await _in_thread(_mark_unpaid, ctx.engine, obj["id"], EnrollmentStatus.PAYMENT_PENDING)
        return "awaiting_payment"
    return await _fulfil(decision, ctx)


async def on_payment_failed(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    moved = await _in_thread(_mark_unpaid, ctx.engine, obj["id"], EnrollmentStatus.PAYMENT_FAILED)
    return "marked_failed" if moved else "ignored"


async def on_session_expired(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    moved = await _in_thread(_mark_unpaid, ctx.engine, obj["id"], EnrollmentStatus.EXPIRED)
    # The seat it held goes back (to the waitlist first); a consenting buyer gets one reminder.
    await _in_thread(checkout_expired, ctx.engine, ctx.settings, obj)
    return "marked_expired" if moved else "ignored"


async def on_payment_intent_succeeded(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """An anonymous checkout's PaymentIntent: fulfil the Session that paid it."""
    if (obj.get("metadata") or {}).get("anonymous_checkout") != "true":
        return "ignored"
    try:
        session = await _in_thread(ctx.gateway.find_session_for_payment_intent, obj["id"])
    except stripe.StripeError:
        raise StripeUnreachable("Could not reach Stripe; please redeliver.") from None
    if session is None:
        return "no_paid_session"
    decision = await _decide(session["id"], f"webhook:{etype}", ctx)
    return await _fulfil(decision, ctx)


HANDLERS: dict[str, EventHandler] = {
    "checkout.session.completed": on_session_paid,
    "checkout.session.async_payment_succeeded": on_session_paid,
    "checkout.session.async_payment_failed": on_payment_failed,
    "checkout.session.expired": on_session_expired,
    "payment_intent.succeeded": on_payment_intent_succeeded,
    **REVOCATION_HANDLERS,
}


async def dispatch(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """The event's outcome from its handler; 'ignored' for a type not in the table."""
    handler = HANDLERS.get(etype)
    return await handler(etype, obj, ctx) if handler is not None else "ignored"


async def _decide(session_id: str, source: str, ctx: EventContext) -> FulfilmentDecision:
    """The fulfilment gate for a webhook: Stripe unreachable means redeliver."""
    try:
        return await _in_thread(decide, session_id, source, ctx.gateway, ctx.engine, ctx.settings)
    except stripe.StripeError:
        raise StripeUnreachable("Could not reach Stripe; please redeliver.") from None


async def _fulfil(decision: FulfilmentDecision, ctx: EventContext) -> str:
    try:
        if decision.verdict == Verdict.FULFILLED:
            return await find_enrollment(ctx.client, decision.checkout_session_id)
    except TemporalUnavailable:
        raise TemporalUnavailable("Could not read the enrollment; please redeliver.") from None
    if not decision.may_start:
        return VERDICT_OUTCOMES[decision.verdict]
    assert decision.inp is not None
    try:
        return await start_enrollment(ctx.client, ctx.settings, decision.inp)
    except TemporalUnavailable:
        raise TemporalUnavailable("Could not start the enrollment; please retry shortly.") from None


def _mark_unpaid(engine: sa.Engine, checkout_session_id: str, status: str) -> bool:
    with session_scope(engine) as db:
        moved = repo.mark_unpaid_enrollment(db, checkout_session_id, status)
        if moved:
            enrollment = repo.get_enrollment_by_session(db, checkout_session_id)
            repo.add_audit(
                db,
                "payment_status",
                actor="stripe",
                enrollment_id=enrollment.id if enrollment else None,
                status=status,
            )
    return bool(moved)
