"""Starting an enrollment workflow: the one way, shared by webhooks, verify-session,
reconciliation and support (grant, replay).

No FastAPI here: activities and the support CLI use it too. Callers translate
`TemporalUnavailable` into their own failure (a 503, an activity retry, an exit code).
"""

import logging
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    SA_EMAIL,
    SA_NEEDS_ATTENTION,
    SA_STATUS,
    SA_TRACK,
    EnrollmentInput,
    EnrollmentOptions,
    EnrollmentStatus,
    workflow_id_for,
)
from core.settings import Settings
from core.tracks import TRACKS
from workflows.enrollment import EnrollmentWorkflow

log = logging.getLogger(__name__)

START_RPC_TIMEOUT = timedelta(seconds=5)


class TemporalUnavailable(Exception):
    """Temporal did not take the start; nothing was started, the caller should retry."""


def enrollment_input(
    session: dict[str, Any], source: str, settings: Settings
) -> EnrollmentInput | None:
    """The workflow input from a paid Session, or None if it is not one of our enrollments."""
    metadata = session.get("metadata") or {}
    details = session.get("customer_details") or {}
    email = metadata.get("email") or session.get("customer_email") or details.get("email")
    track = metadata.get("track")
    if not email or track not in TRACKS:
        return None
    pi = session.get("payment_intent")
    if isinstance(pi, dict):
        pi = pi.get("id")
    customer = session.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return EnrollmentInput(
        checkout_session_id=session["id"],
        email=str(email).strip().lower(),
        name=str(metadata.get("name") or details.get("name") or "")[:100],
        track=track,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        payment_intent_id=pi,
        customer_id=customer,
        source=source,
        options=enrollment_options(settings),
    )


def enrollment_options(settings: Settings) -> EnrollmentOptions:
    return EnrollmentOptions(
        tool_retry_seconds=settings.tool_retry_minutes * 60,
        support_email=settings.support_email,
    )


def start_options(inp: EnrollmentInput) -> dict[str, Any]:
    """What operators see in the Temporal UI from the first second: attributes and summary."""
    track = TRACKS[inp.track]
    amount = f"{(inp.amount or 0) / 100:.2f} {(inp.currency or '').upper()}".strip()
    return {
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(SA_EMAIL, inp.email),
                SearchAttributePair(SA_TRACK, inp.track),
                SearchAttributePair(SA_STATUS, EnrollmentStatus.PAID),
                SearchAttributePair(SA_NEEDS_ATTENTION, False),
            ]
        ),
        "static_summary": f"{inp.name or inp.email} <{inp.email}> · {track.title} · {amount}",
        "static_details": f"Checkout Session {inp.checkout_session_id}; started by {inp.source}",
    }


async def start_enrollment(client: Client, settings: Settings, inp: EnrollmentInput) -> str:
    """Start the enrollment once. 'started': its workflow runs (new, or found running);
    'already_started': it ran to the end before. Raises TemporalUnavailable."""
    try:
        await client.start_workflow(
            EnrollmentWorkflow.run,
            inp,
            id=workflow_id_for(inp.checkout_session_id),
            task_queue=settings.temporal_task_queue,
            # Running: attach to it. Closed: never run the same payment again.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            rpc_timeout=START_RPC_TIMEOUT,
            **start_options(inp),
        )
    except WorkflowAlreadyStartedError:
        return "already_started"
    except (RPCError, RuntimeError) as err:
        # RuntimeError: a lazy client could not connect at all.
        log.error("temporal unavailable while starting an enrollment: %s", type(err).__name__)
        raise TemporalUnavailable(str(err)) from None
    return "started"


async def find_enrollment(client: Client, checkout_session_id: str) -> str:
    """For a payment the database already recorded: never start it again, only say where
    its run is. 'started': running; 'already_started': it ran to the end; 'already_fulfilled':
    Temporal no longer has it (the database is the record). Raises TemporalUnavailable."""
    handle = client.get_workflow_handle(workflow_id_for(checkout_session_id))
    try:
        desc = await handle.describe(rpc_timeout=START_RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "already_fulfilled"
        raise TemporalUnavailable(str(err)) from None
    except RuntimeError as err:
        raise TemporalUnavailable(str(err)) from None
    return "started" if desc.status == WorkflowExecutionStatus.RUNNING else "already_started"
