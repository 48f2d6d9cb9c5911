"""Refunds and disputes: Stripe's charge events become RevokeWorkflow runs.

Called from the webhook dispatch and by support's `revoke`. A charge maps to its
enrollment through `payment_intent_id`. Workflow ids come from the Stripe object:
`revoke-<payment_intent>` for a full refund (support's revoke uses the same id, so the
refund's own webhook finds it), `revoke-<dispute>` and `reinstate-<dispute>`.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
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
from core.contracts import SA_EMAIL, SA_TRACK
from core.db import session_scope
from core.enrollment_start import TemporalUnavailable
from core.fulfilment import end_before_fulfilment
from core.models import EnrollmentStatus
from core.settings import Settings
from core.stripe_gateway import StripeGateway
from support import repository as ops_repo
from workflows.revoke import REINSTATE, REVOKE, AccessChangeInput, RevokeWorkflow

log = logging.getLogger(__name__)

REVOCATION_EVENTS = ("charge.refunded", "charge.dispute.created", "charge.dispute.closed")


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
            RevokeWorkflow.run,
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
            rpc_timeout=timedelta(seconds=5),
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
        e = ops_repo.get_enrollment_by_payment_intent(s, payment_intent_id)
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


def _end_unfulfilled(
    etype: str,
    obj: dict[str, Any],
    payment_intent_id: str | None,
    object_id: str,
    gateway: StripeGateway,
    engine: sa.Engine,
) -> str:
    """A charge event for a payment no run recorded yet. Raises stripe.StripeError."""
    if not payment_intent_id or etype == "charge.dispute.closed":
        return "no_enrollment"
    if etype == "charge.refunded" and not obj.get("refunded"):
        return "no_enrollment"  # partial: when the payment is fulfilled, access stays
    session = gateway.find_session_for_payment_intent(payment_intent_id)
    if session is None:
        return "no_enrollment"
    with session_scope(engine) as s:
        row = repo.get_enrollment_by_session(s, str(session["id"]))
        if row is None:
            return "no_enrollment"
        what = "refunded in full" if etype == "charge.refunded" else "disputed"
        ended = end_before_fulfilment(
            s, row, f"{object_id}: {what} before fulfilment", f"webhook:{etype}"
        )
        return "ended_before_fulfilment" if ended else "no_enrollment"


async def handle_revocation_event(
    etype: str,
    obj: dict[str, Any],
    client: Client,
    settings: Settings,
    engine: sa.Engine,
    gateway: StripeGateway,
) -> str:
    """One of REVOCATION_EVENTS; returns the webhook outcome. Raises TemporalUnavailable."""
    pi = _id(obj.get("payment_intent"))
    key = await asyncio.to_thread(find_enrollment, engine, pi)
    object_id = str(obj.get("id") or "")
    if key is None:
        # The refund or dispute may come before the payment was recorded (its webhook late
        # or lost): find our row through Stripe's Session and close it before it starts.
        return await asyncio.to_thread(_end_unfulfilled, etype, obj, pi, object_id, gateway, engine)

    if etype == "charge.refunded":
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
        outcome = await start_access_change(client, settings, key, inp, revoke_workflow_id(key))
        return f"revoke_{outcome}"

    if etype == "charge.dispute.created":
        if await asyncio.to_thread(access_already_ended, engine, key):
            await asyncio.to_thread(
                record_once, engine, key.enrollment_id, "dispute_recorded", dispute=object_id
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
        outcome = await start_access_change(client, settings, key, inp, f"revoke-{object_id}")
        return f"revoke_{outcome}"

    # charge.dispute.closed
    status = str(obj.get("status") or "")
    if status != "won":
        await asyncio.to_thread(
            record_once,
            engine,
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
    outcome = await start_access_change(client, settings, key, inp, f"reinstate-{object_id}")
    return f"reinstate_{outcome}"
