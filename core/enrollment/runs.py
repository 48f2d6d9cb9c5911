"""The enrollment's Temporal facade: start a run (the one way, shared by webhooks,
verify-session, reconciliation and support), find it, read its state, and send it
support's decision.

Workflows are named by type (`core.contracts.ENROLLMENT_WORKFLOW`), so this module needs no
import of the workflow code.

No FastAPI here: activities and the support CLI use it too. Callers translate
`TemporalUnavailable` into their own failure (a 503, an activity retry, an exit code).
"""

import dataclasses
import logging
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    ENROLLMENT_WORKFLOW,
    SA_EMAIL,
    SA_NEEDS_ATTENTION,
    SA_STATUS,
    SA_TRACK,
    Decision,
    EnrollmentInput,
    EnrollmentState,
    EnrollmentStatus,
    initial_state,
    workflow_id_for,
)
from core.settings import Settings
from core.temporal import QUERY_TIMEOUT, RPC_TIMEOUT, TemporalUnavailable
from core.tracks import TRACKS

log = logging.getLogger(__name__)

STATE_QUERY = "state"  # EnrollmentWorkflow.state
DECIDE_UPDATE = "decide"  # EnrollmentWorkflow.decide
# A decision waits for the workflow to apply it, behind any workflow task in progress.
UPDATE_TIMEOUT = timedelta(seconds=30)


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
        # The step list from the first second: a read that no worker answers in time (the
        # memo fallback) shows the steps, not an empty list, before the run's first write.
        "memo": {
            "progress": initial_state(inp, with_tools(inp).tools).progress(),
            "student_ready": False,
        },
    }


def with_tools(inp: EnrollmentInput) -> EnrollmentInput:
    """The input with its track's tools as the catalogue lists them now."""
    if inp.tools or inp.track not in TRACKS:
        return inp
    return dataclasses.replace(inp, tools=list(TRACKS[inp.track].tools))


async def start_enrollment(client: Client, settings: Settings, inp: EnrollmentInput) -> str:
    """Start the enrollment once. 'started': its workflow runs (new, or found running);
    'already_started': it ran to the end before. Raises TemporalUnavailable."""
    inp = with_tools(inp)
    try:
        await client.start_workflow(
            ENROLLMENT_WORKFLOW,
            inp,
            id=workflow_id_for(inp.checkout_session_id),
            task_queue=settings.temporal_task_queue,
            # Running: attach to it. Closed: never run the same payment again.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            rpc_timeout=RPC_TIMEOUT,
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
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "already_fulfilled"
        raise TemporalUnavailable(str(err)) from None
    except RuntimeError as err:
        raise TemporalUnavailable(str(err)) from None
    return "started" if desc.status == WorkflowExecutionStatus.RUNNING else "already_started"


def enrollment_handle(
    client: Client, checkout_session_id: str
) -> WorkflowHandle[Any, EnrollmentState]:
    return client.get_workflow_handle(
        workflow_id_for(checkout_session_id), result_type=EnrollmentState
    )


async def query_state(
    handle: WorkflowHandle[Any, EnrollmentState], reject_not_open: bool = False
) -> EnrollmentState | None:
    """The running workflow's state query, within the one read timeout."""
    return await handle.query(
        STATE_QUERY,
        result_type=EnrollmentState,
        reject_condition=QueryRejectCondition.NOT_OPEN if reject_not_open else None,
        rpc_timeout=QUERY_TIMEOUT,
    )


async def send_decision(
    handle: WorkflowHandle[Any, EnrollmentState], decision: Decision, update_id: str | None = None
) -> EnrollmentState | None:
    """Support's decision (retry, skip, cancel) as the running workflow's update. The same
    `update_id` sent again is the same update: Temporal applies it once."""
    return await handle.execute_update(
        DECIDE_UPDATE,
        decision,
        id=update_id,
        result_type=EnrollmentState,
        rpc_timeout=UPDATE_TIMEOUT,
    )
