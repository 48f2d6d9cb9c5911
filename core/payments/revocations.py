"""Refunds and disputes: Stripe's charge events become RevokeWorkflow runs.

Its handlers are in the webhook table (`core/enrollment/webhooks.py`); support's `revoke`
starts the same workflow. A charge maps to its
enrollment through `payment_intent_id`. Workflow ids come from the Stripe object:
`revoke-<payment_intent>` for a full refund (support's revoke uses the same id, so the
refund's own webhook finds it), `revoke-<dispute>` and `reinstate-<dispute>`.
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
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from core import repository as repo
from core.contracts import (
    REINSTATE,
    REVOKE,
    REVOKE_WORKFLOW,
    SA_EMAIL,
    SA_TRACK,
    AccessChangeInput,
    EnrollmentStatus,
)
from core.db import session_scope
from core.payments.events import EventContext, EventHandler, StripeUnreachable
from core.payments.fulfilment import end_before_fulfilment
from core.settings import Settings
from core.temporal import RPC_TIMEOUT, TemporalUnavailable

log = logging.getLogger(__name__)


@dataclass
class EnrollmentKey:
    enrollment_id: int
    checkout_session_id: str
    payment_intent_id: str | None
    email: str
    track: str
    status: str


def revoke_workflow_id(key: EnrollmentKey) -> str:
    return f"revoke-{key.payment_intent_id or key.checkout_session_id}"


async def start_access_change(
    client: Client, settings: Settings, key: EnrollmentKey, inp: AccessChangeInput, wid: str
) -> str:
    """Start one access change; 'started' or 'already_started'. Raises TemporalUnavailable."""
    verb = "Revoke" if inp.action == REVOKE else "Reinstate"
    try:
        await client.start_workflow(
            REVOKE_WORKFLOW,
            inp,
            id=wid,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A run that failed or was terminated must not block the next event's: only one that
            # completed (or still runs) answers "already started".
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            # Found by the same "by email" search as the enrollment itself.
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(SA_EMAIL, key.email), SearchAttributePair(SA_TRACK, key.track)]
            ),
            static_summary=f"{verb} access: {key.email} · {key.track} · {inp.cause}",
            static_details=(
                f"Checkout Session {key.checkout_session_id}; {inp.stripe_object_id or 'support'}"
                f"; by {inp.actor}: {inp.reason}"
            ),
            rpc_timeout=RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        return "already_started"
    except (RPCError, RuntimeError) as err:
        log.error("temporal unavailable while starting %s: %s", wid, type(err).__name__)
        raise TemporalUnavailable(str(err)) from None
    log.info("access change started", extra={"workflow_id": wid})
    return "started"


def find_enrollment(engine: sa.Engine, payment_intent_id: str | None) -> EnrollmentKey | None:
    if not payment_intent_id:
        return None
    with session_scope(engine) as s:
        e = repo.get_enrollment_by_payment_intent(s, payment_intent_id)
        if e is None or e.id is None:
            return None
        return EnrollmentKey(
            e.id, e.checkout_session_id, e.payment_intent_id, e.email, e.track, e.status
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
    inp = AccessChangeInput(
        key.checkout_session_id,
        REVOKE,
        "refund",
        "stripe",
        f"charge {object_id} refunded in full",
        stripe_object_id=object_id,
    )
    outcome = await _start(ctx, key, inp, revoke_workflow_id(key))
    return f"revoke_{outcome}"


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
    inp = AccessChangeInput(
        key.checkout_session_id,
        REVOKE,
        "dispute",
        "stripe",
        f"dispute {object_id} opened ({obj.get('reason') or 'no reason given'})",
        stripe_object_id=object_id,
    )
    outcome = await _start(ctx, key, inp, f"revoke-{object_id}")
    return f"revoke_{outcome}"


async def on_dispute_closed(etype: str, obj: dict[str, Any], ctx: EventContext) -> str:
    """A dispute closed as won gives access back; any other close is recorded."""
    key = await _charge_key(obj, ctx)
    if key is None:
        return "no_enrollment"
    object_id = str(obj.get("id") or "")
    status = str(obj.get("status") or "")
    if status != "won":
        await asyncio.to_thread(
            record_once,
            ctx.engine,
            key.enrollment_id,
            "dispute_closed",
            dispute=object_id,
            status=status,
        )
        return "dispute_closed_recorded"
    inp = AccessChangeInput(
        key.checkout_session_id,
        REINSTATE,
        "dispute",
        "stripe",
        f"dispute {object_id} closed as won",
        stripe_object_id=object_id,
    )
    outcome = await _start(ctx, key, inp, f"reinstate-{object_id}")
    return f"reinstate_{outcome}"


async def _start(ctx: EventContext, key: EnrollmentKey, inp: AccessChangeInput, wid: str) -> str:
    try:
        return await start_access_change(ctx.client, ctx.settings, key, inp, wid)
    except TemporalUnavailable:
        raise TemporalUnavailable("Could not start the revocation; please redeliver.") from None


# This domain's entries in the webhook table (core/enrollment/webhooks.py).
REVOCATION_HANDLERS: dict[str, EventHandler] = {
    "charge.refunded": on_charge_refunded,
    "charge.dispute.created": on_dispute_created,
    "charge.dispute.closed": on_dispute_closed,
}
