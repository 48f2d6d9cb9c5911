"""verify-session: an enrollment as its workflow knows it (query, memo, result), or as
the fulfilment gate decides before its workflow exists.
"""

import hashlib
import json
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import stripe
from fastapi.concurrency import run_in_threadpool
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.errors import AppError, NotFound
from api.payments.errors import TemporalDown
from core.contracts import (
    READY_TO_LAND,
    SA_STATUS,
    EnrollmentInput,
    EnrollmentState,
    EnrollmentStatus,
    Step,
)
from core.enrollment import runs
from core.payments.fulfilment import Verdict, decide
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.temporal import QUERY_TIMEOUT, TemporalUnavailable

log = logging.getLogger(__name__)


async def start_enrollment(client: Client, settings: Settings, inp: EnrollmentInput) -> str:
    """Start the enrollment once. 'started': its workflow runs (new, or found running);
    'already_started': it ran to the end before. Raises TemporalDown."""
    try:
        return await runs.start_enrollment(client, settings, inp)
    except TemporalUnavailable:
        raise TemporalDown("Could not start the enrollment; please retry shortly.") from None


# ---- verify-session ------------------------------------------------------------------


@dataclass
class Verification:
    state: EnrollmentState
    ready: bool
    # Nothing more will happen on its own (held, refused, failed run): a person decides.
    closed: bool = False

    @property
    def version(self) -> str:
        """A short tag of what a caller has seen: it changes whenever the state moves."""
        seen = [self.state.status, self.ready, self.closed, self.state.progress("staff")]
        return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:16]


class FinishedStates:
    """Results of completed enrollment runs, kept briefly in this process.

    The success page polls once a second and a completed run's result never changes, so
    repeat polls need not ask Temporal for the same history again. Entries expire within
    `ttl_s` so a support replay (a new run of the same workflow id) shows within that; each
    between 3/4 and all of it, so states cached together are not all fetched again in the
    same second (bench/README.md)."""

    def __init__(self, size: int = 4096, ttl_s: float = 15.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._items: OrderedDict[str, tuple[float, EnrollmentState]] = OrderedDict()

    def get(self, session_id: str) -> EnrollmentState | None:
        item = self._items.get(session_id)
        if item is None or item[0] < time.monotonic():
            self._items.pop(session_id, None)
            return None
        return item[1]

    def put(self, session_id: str, state: EnrollmentState) -> None:
        ttl = self.ttl_s * random.uniform(0.75, 1.0)
        self._items[session_id] = (time.monotonic() + ttl, state)
        self._items.move_to_end(session_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


async def read_enrollment(
    client: Client,
    gateway: StripeGateway,
    settings: Settings,
    engine: sa.Engine,
    session_id: str,
    finished: FinishedStates | None = None,
) -> Verification:
    """The enrollment as its workflow knows it: one query while it runs (the common case:
    one round trip), its result once it completed, Stripe before it exists."""
    if finished is not None and (state := finished.get(session_id)) is not None:
        return Verification(state, True)
    handle = runs.enrollment_handle(client, session_id)
    try:
        state = await runs.query_state(handle, reject_not_open=True)
    except WorkflowQueryRejectedError as closed:  # not running: its status says why
        return await _closed(handle, closed.status, session_id, finished)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return await _before_workflow(client, gateway, settings, engine, session_id)
    except (WorkflowQueryFailedError, RuntimeError):
        pass
    else:
        if state is not None:
            return Verification(state, state.student_ready)
    # No worker answered in time (or it has not run yet): what the workflow last published.
    return await _described(handle, session_id)


async def _described(handle: WorkflowHandle[Any, EnrollmentState], session_id: str) -> Verification:
    try:
        desc = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, RuntimeError):
        raise TemporalDown("Could not read the enrollment; please retry shortly.") from None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        state = await _state_from_memo(desc, session_id)
        return Verification(state, state.student_ready)
    return await _closed(handle, desc.status, session_id)


async def _closed(
    handle: WorkflowHandle[Any, EnrollmentState],
    status: WorkflowExecutionStatus | None,
    session_id: str,
    finished: FinishedStates | None = None,
) -> Verification:
    if status == WorkflowExecutionStatus.COMPLETED:
        # The result is in history: no worker needed to read it.
        try:
            state = await handle.result(rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, RuntimeError):
            raise TemporalDown("Could not read the enrollment; please retry shortly.") from None
        if finished is not None:
            finished.put(session_id, state)
        return Verification(state, True)
    # Failed, terminated or timed out: a person must look; the student sees it plainly.
    state = _placeholder(
        session_id,
        EnrollmentStatus.NEEDS_ATTENTION,
        "support",
        "Our team is reviewing your enrollment",
    )
    state.needs_attention = True
    return Verification(state, False, closed=True)


async def _state_from_memo(desc: WorkflowExecutionDescription, session_id: str) -> EnrollmentState:
    memo = await desc.memo()
    progress = memo.get("progress") or {}
    steps = [
        Step(s["key"], s["label"], s["status"], s.get("detail", ""))
        for s in progress.get("steps", [])
    ]
    state = EnrollmentState(
        checkout_session_id=session_id,
        email="",
        track="",
        status=desc.typed_search_attributes.get(SA_STATUS) or EnrollmentStatus.PAID,
        steps=steps,
        needs_attention=bool(progress.get("needs_attention")),
        student_ready=bool(memo.get("student_ready")),
    )
    return state


def _placeholder(session_id: str, status: str, key: str, label: str) -> EnrollmentState:
    return EnrollmentState(
        checkout_session_id=session_id,
        email="",
        track="",
        status=status,
        steps=[Step(key, label, "running")],
    )


async def _before_workflow(
    client: Client,
    gateway: StripeGateway,
    settings: Settings,
    engine: sa.Engine,
    session_id: str,
) -> Verification:
    """No workflow (yet, or its history is gone): the fulfilment gate decides. Paid, ours
    and never fulfilled means fulfil now (the webhook may be late); otherwise the database
    answers, and nothing whose access ended is ever started again."""
    try:
        decision = await run_in_threadpool(
            decide, session_id, "verify-session", gateway, engine, settings
        )
    except stripe.InvalidRequestError as err:
        if err.http_status == 404:
            raise NotFound("No checkout session with this id", error="Unknown session") from None
        raise AppError(
            "Stripe refused the lookup", status_code=502, error="Payment provider error"
        ) from None
    except stripe.StripeError:
        raise AppError(
            "Could not reach the payment provider", status_code=502, error="Payment provider error"
        ) from None
    verdict = decision.verdict
    if verdict == Verdict.EXPIRED:
        raise AppError(
            "This checkout expired before payment. Start again to enroll.",
            status_code=410,
            error="Checkout expired",
        )
    if verdict == Verdict.NOT_OURS:
        raise NotFound("This checkout is not an Onramp enrollment", error="Unknown session")
    if verdict == Verdict.FULFIL:
        assert decision.inp is not None
        await start_enrollment(client, settings, decision.inp)
        return Verification(
            _placeholder(session_id, EnrollmentStatus.PAID, "payment", "Payment confirmed"), False
        )
    if verdict == Verdict.UNPAID:
        return Verification(
            _placeholder(
                session_id, "AWAITING_PAYMENT", "payment", "Waiting for payment confirmation"
            ),
            False,
        )
    if verdict == Verdict.FULFILLED and decision.status in READY_TO_LAND:
        # Landed before and its history is gone: the database is the record.
        state = _placeholder(session_id, decision.status, "done", "Enrollment complete")
        state.steps[0].status = "done"
        state.student_ready = True
        return Verification(state, True)
    # Ended, refused, or paid but its run is gone before it finished: a person decides.
    state = _placeholder(
        session_id,
        decision.status or EnrollmentStatus.NEEDS_ATTENTION,
        "support",
        _HELD_LABELS[verdict],
    )
    state.needs_attention = True
    return Verification(state, False, closed=True)


_HELD_LABELS = {
    Verdict.ENDED: "This enrollment is closed; contact support",
    Verdict.MISMATCH: "Our team is reviewing your payment",
    Verdict.FULFILLED: "Our team is reviewing your enrollment",
}
