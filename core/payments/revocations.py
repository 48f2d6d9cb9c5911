"""Refunds and disputes: Stripe's charge events delivered to the enrollment's owner.

Its handlers are in the webhook table (`core/enrollment/webhooks.py`); support's `revoke`
delivers through the same door. A charge maps to its enrollment through
`payment_intent_id`. Every event goes to the one owner of the enrollment, its
EnrollmentWorkflow (`enrollment-<checkout session>`), as a `lifecycle` signal with
signal-with-start: a running owner queues it behind what it is doing (a redelivery, by its
Stripe event id, is handled once); when the run is closed or its history is gone, a run
starts that reads the ledger and handles it, and never provisions anything anew.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import stripe
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError

from core import repository as repo
from core.contracts import (
    DISPUTE_LOST,
    DISPUTE_OPENED,
    DISPUTE_WON,
    ENROLLMENT_WORKFLOW,
    LIFECYCLE_SIGNAL,
    REFUNDED,
    SA_EMAIL,
    SA_NEEDS_ATTENTION,
    SA_STATUS,
    SA_TRACK,
    EnrollmentInput,
    EnrollmentStatus,
    LifecycleEvent,
    OwnerCarry,
    ledger_state,
    workflow_id_for,
)
from core.db import session_scope
from core.payments.events import EventContext, EventHandler, StripeUnreachable
from core.payments.fulfilment import end_before_fulfilment, enrollment_options
from core.settings import Settings
from core.temporal import RPC_TIMEOUT, TemporalUnavailable
from core.tracks import TRACKS

log = logging.getLogger(__name__)


@dataclass
class EnrollmentKey:
    enrollment_id: int
    checkout_session_id: str
    payment_intent_id: str | None
    email: str
    track: str
    status: str
    name: str = ""


def owner_input(settings: Settings, key: EnrollmentKey, source: str) -> EnrollmentInput:
    """The input of a run started by a later event: the ledger's status, nothing to fulfil."""
    track = TRACKS.get(key.track)
    tools = list(track.tools) if track else []
    inp = EnrollmentInput(
        checkout_session_id=key.checkout_session_id,
        email=key.email,
        name=key.name,
        track=key.track,
        payment_intent_id=key.payment_intent_id,
        source=source,
        options=enrollment_options(settings),
        tools=tools,
    )
    inp.owner = OwnerCarry(ledger_state(inp, tools, key.status))
    return inp


async def deliver_to_owner(
    client: Client, settings: Settings, key: EnrollmentKey, event: LifecycleEvent
) -> str:
    """Signal-with-start the enrollment's owner: 'delivered'. Raises TemporalUnavailable."""
    inp = owner_input(settings, key, f"event:{event.kind}")
    wid = workflow_id_for(key.checkout_session_id)
    try:
        await client.start_workflow(
            ENROLLMENT_WORKFLOW,
            inp,
            id=wid,
            task_queue=settings.temporal_task_queue,
            start_signal=LIFECYCLE_SIGNAL,
            start_signal_args=[event],
            # Running: the signal joins its queue. Closed or gone: a run owning it again.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_EMAIL, key.email),
                    SearchAttributePair(SA_TRACK, key.track),
                    SearchAttributePair(SA_STATUS, key.status),
                    SearchAttributePair(SA_NEEDS_ATTENTION, False),
                ]
            ),
            static_summary=f"{key.email} · {key.track} · owner started by {event.kind}",
            static_details=(
                f"Checkout Session {key.checkout_session_id}; fulfilled earlier, started again "
                f"to handle {event.kind} ({event.stripe_object_id or event.event_id})"
            ),
            rpc_timeout=RPC_TIMEOUT,
        )
    except (RPCError, RuntimeError) as err:
        log.error("temporal unavailable while delivering to %s: %s", wid, type(err).__name__)
        raise TemporalUnavailable(str(err)) from None
    log.info(
        "delivered to the enrollment's owner",
        extra={"workflow_id": wid, "event_id": event.event_id, "event_type": event.kind},
    )
    return "delivered"


def find_enrollment(engine: sa.Engine, payment_intent_id: str | None) -> EnrollmentKey | None:
    if not payment_intent_id:
        return None
    with session_scope(engine) as s:
        e = repo.get_enrollment_by_payment_intent(s, payment_intent_id)
        if e is None or e.id is None:
            return None
        return EnrollmentKey(
            e.id, e.checkout_session_id, e.payment_intent_id, e.email, e.track, e.status, e.name
        )


def access_already_ended(engine: sa.Engine, key: EnrollmentKey) -> bool:
    """Whether a later refund or dispute has nothing left to take away. REVOKED is set before
    the tools are deprovisioned, so a revocation that died on the way (its run failed or was
    terminated) leaves REVOKED without its closing audit event: the next event revokes again."""
    if key.status == EnrollmentStatus.CANCELLED:
        return True
    if key.status != EnrollmentStatus.REVOKED:
        return False
    with session_scope(engine) as s:
        return repo.audit_exists(s, key.enrollment_id, "enrollment_revoked")


def record_once(engine: sa.Engine, enrollment_id: int, action: str, **details: Any) -> bool:
    """An audit event that a redelivered webhook does not write twice."""
    with session_scope(engine) as s:
        if repo.audit_exists(s, enrollment_id, action, **details):
            return False
        repo.add_audit(s, action, actor="stripe", enrollment_id=enrollment_id, **details)
        return True


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


async def _charge_key(obj: dict[str, Any], ctx: EventContext) -> EnrollmentKey | None:
    return await asyncio.to_thread(find_enrollment, ctx.engine, _id(obj.get("payment_intent")))


async def _unrecorded(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """A charge event for a payment no run recorded yet (its webhook late or lost): our row
    is found through Stripe's Session and closed before anything starts."""
    try:
        return await asyncio.to_thread(_end_unfulfilled, etype, obj, ctx)
    except stripe.StripeError:
        raise StripeUnreachable("Could not reach Stripe; please redeliver.") from None


def _end_unfulfilled(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    payment_intent_id = _id(obj.get("payment_intent"))
    if not payment_intent_id or etype == "charge.dispute.closed":
        return "no_enrollment"
    if etype == "charge.refunded" and not obj.get("refunded"):
        return "no_enrollment"  # partial: when the payment is fulfilled, access stays
    session = ctx.gateway.find_session_for_payment_intent(payment_intent_id)
    if session is None:
        return "no_enrollment"
    object_id = str(obj.get("id") or "")
    with session_scope(ctx.engine) as s:
        row = repo.get_enrollment_by_session(s, str(session["id"]))
        if row is None:
            return "no_enrollment"
        what = "refunded in full" if etype == "charge.refunded" else "disputed"
        ended = end_before_fulfilment(
            s, row, f"{object_id}: {what} before fulfilment", f"webhook:{etype}"
        )
        return "ended_before_fulfilment" if ended else "no_enrollment"


async def on_charge_refunded(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """A full refund withdraws access; a partial one is recorded for support."""
    key = await _charge_key(obj, ctx)
    if key is None:
        return await _unrecorded(etype, obj, ctx)
    engine, object_id = ctx.engine, str(obj.get("id") or "")
    refunded, amount = int(obj.get("amount_refunded") or 0), int(obj.get("amount") or 0)
    if not obj.get("refunded"):
        # Partial: recorded and shown to support; access stays as it is.
        await asyncio.to_thread(
            record_once,
            engine,
            key.enrollment_id,
            "partial_refund",
            charge=object_id,
            amount_refunded=refunded,
            amount=amount,
            currency=obj.get("currency"),
        )
        return "partial_refund_recorded"
    if await asyncio.to_thread(access_already_ended, engine, key):
        await asyncio.to_thread(
            record_once, engine, key.enrollment_id, "refund_recorded", charge=object_id
        )
        return f"already_{key.status.lower()}"
    event = _event(REFUNDED, etype, object_id, ctx, f"charge {object_id} refunded in full")
    return f"revoke_{await _deliver(ctx, key, event)}"


async def on_dispute_created(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """An opened dispute withdraws access until it is closed."""
    key = await _charge_key(obj, ctx)
    if key is None:
        return await _unrecorded(etype, obj, ctx)
    object_id = str(obj.get("id") or "")
    if await asyncio.to_thread(access_already_ended, ctx.engine, key):
        await asyncio.to_thread(
            record_once, ctx.engine, key.enrollment_id, "dispute_recorded", dispute=object_id
        )
        return f"already_{key.status.lower()}"
    reason = f"dispute {object_id} opened ({obj.get('reason') or 'no reason given'})"
    event = _event(DISPUTE_OPENED, etype, object_id, ctx, reason)
    return f"revoke_{await _deliver(ctx, key, event)}"


async def on_dispute_closed(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """A dispute closed as won gives access back; lost, access stays withdrawn (withdrawn
    now if its opening never reached us); any other close is recorded."""
    key = await _charge_key(obj, ctx)
    if key is None:
        return "no_enrollment"
    object_id = str(obj.get("id") or "")
    status = str(obj.get("status") or "")
    if status == "won":
        event = _event(DISPUTE_WON, etype, object_id, ctx, f"dispute {object_id} closed as won")
        return f"reinstate_{await _deliver(ctx, key, event)}"
    await asyncio.to_thread(
        record_once,
        ctx.engine,
        key.enrollment_id,
        "dispute_closed",
        dispute=object_id,
        status=status,
    )
    if status == "lost" and not await asyncio.to_thread(access_already_ended, ctx.engine, key):
        event = _event(DISPUTE_LOST, etype, object_id, ctx, f"dispute {object_id} lost")
        return f"revoke_{await _deliver(ctx, key, event)}"
    return "dispute_closed_recorded"


def _event(kind: str, etype: str, object_id: str, ctx: EventContext, reason: str) -> LifecycleEvent:
    # Without Stripe's event id (a handler called directly), the object names the event.
    event_id = ctx.event_id or f"{etype}:{object_id}"
    return LifecycleEvent(kind, event_id, "stripe", reason, stripe_object_id=object_id)


async def _deliver(ctx: EventContext, key: EnrollmentKey, event: LifecycleEvent) -> str:
    try:
        return await deliver_to_owner(ctx.client, ctx.settings, key, event)
    except TemporalUnavailable:
        raise TemporalUnavailable("Could not deliver the event; please redeliver.") from None


# This domain's entries in the webhook table (core/enrollment/webhooks.py).
REVOCATION_HANDLERS: dict[str, EventHandler] = {
    "charge.refunded": on_charge_refunded,
    "charge.dispute.created": on_dispute_created,
    "charge.dispute.closed": on_dispute_closed,
}
