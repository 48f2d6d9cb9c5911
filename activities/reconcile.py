"""Reconciliation: every paid Checkout Session has its enrollment, webhook or not.

`ReconcileActivities.reconcile_paid_sessions` is ReconcileWorkflow's one activity;
`ensure_reconcile_schedule` makes the worker's boot create (or update) the Schedule.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
)
from temporalio.exceptions import ApplicationError

from core import metrics
from core import repository as repo
from core.cohorts.service import sweep as sweep_seats
from core.db import session_scope
from core.enrollment.runs import start_enrollment
from core.models import Enrollment
from core.payments.fulfilment import Verdict, decide
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.temporal import TemporalUnavailable, ensure_schedule, interval_schedule
from workflows.reconcile import SCHEDULE_ID, ReconcileInput, ReconcileResult, ReconcileWorkflow

log = logging.getLogger(__name__)

AUDITED_IDS = 100  # at most this many started Session ids go into one audit event


class ReconcileActivities:
    def __init__(
        self, settings: Settings, engine: sa.Engine, stripe_gateway: StripeGateway, client: Client
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.stripe = stripe_gateway
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        return [self.reconcile_paid_sessions]

    @activity.defn
    async def reconcile_paid_sessions(self, inp: ReconcileInput) -> ReconcileResult:
        created_gte = int(time.time() - inp.lookback_hours * 3600)
        sessions = await asyncio.to_thread(self.stripe.list_paid_sessions, created_gte)
        fulfilled = await asyncio.to_thread(self._fulfilled, [s["id"] for s in sessions])
        result = ReconcileResult(checked=len(sessions))
        for session in sessions:
            if session["id"] in fulfilled:
                result.known += 1
                continue
            activity.heartbeat(session["id"])
            decision = await asyncio.to_thread(
                decide, session["id"], "reconcile", self.stripe, self.engine, self.settings
            )
            if decision.verdict == Verdict.NOT_OURS:
                result.not_ours += 1
                continue
            if decision.verdict == Verdict.MISMATCH:
                result.refused += 1
                continue
            if decision.verdict == Verdict.ENDED:
                result.ended += 1
                continue
            if not decision.may_start or decision.inp is None:
                result.known += 1
                continue
            try:
                outcome = await start_enrollment(self.client, self.settings, decision.inp)
            except TemporalUnavailable:
                raise ApplicationError(
                    "Temporal did not take the start", type="TemporalDown"
                ) from None
            if outcome == "started":
                result.started.append(session["id"])
                log.warning(
                    "reconcile started a missing enrollment",
                    extra={"workflow_id": f"enrollment-{session['id']}"},
                )
            else:
                result.already_started += 1
        metrics.RECONCILED_ENROLLMENTS.inc(len(result.started))
        await asyncio.to_thread(self._audit, inp, result)
        # The seat ledger's own timer: expired holds and offers, seats of ended enrollments.
        await asyncio.to_thread(sweep_seats, self.engine, self.settings)
        return result

    def _fulfilled(self, session_ids: list[str]) -> set[str]:
        """Sessions whose payment the database already recorded (record_payment ran)."""
        if not session_ids:
            return set()
        with session_scope(self.engine) as s:
            rows = s.exec(
                select(Enrollment.checkout_session_id)
                .where(col(Enrollment.checkout_session_id).in_(session_ids))
                .where(col(Enrollment.paid_at).is_not(None))
            ).all()
            return set(rows)

    def _audit(self, inp: ReconcileInput, result: ReconcileResult) -> None:
        with session_scope(self.engine) as s:
            repo.add_audit(
                s,
                "reconcile_run",
                actor=inp.actor,
                lookback_hours=inp.lookback_hours,
                checked=result.checked,
                known=result.known,
                already_started=result.already_started,
                not_ours=result.not_ours,
                refused=result.refused,
                ended=result.ended,
                started=result.started[:AUDITED_IDS],
                started_count=len(result.started),
            )


def reconcile_schedule(settings: Settings) -> Schedule:
    return interval_schedule(
        ReconcileWorkflow.run,
        ReconcileInput(lookback_hours=settings.reconcile_lookback_hours),
        schedule_id=SCHEDULE_ID,
        task_queue=settings.temporal_task_queue,
        every=timedelta(minutes=settings.reconcile_interval_minutes),
        run_timeout=timedelta(minutes=30),
        summary="Reconcile paid Stripe Checkout Sessions with enrollments",
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> None:
    """Create the Schedule, or bring an existing one to these settings (pause state kept)."""
    await ensure_schedule(client, SCHEDULE_ID, reconcile_schedule(settings))
