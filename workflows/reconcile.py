"""ReconcileWorkflow: nothing paid is lost. Run by the `reconcile-enrollments` Schedule.

Stripe is the source of truth for payments; a webhook can be lost or late for days. Each
run lists recent paid Checkout Sessions and starts the enrollment of any that has none.
The activity is in `activities/reconcile.py`.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

SCHEDULE_ID = "reconcile-enrollments"


@dataclass
class ReconcileInput:
    lookback_hours: float = 72.0
    actor: str = "schedule"


@dataclass
class ReconcileResult:
    checked: int = 0  # paid Sessions seen in the window
    known: int = 0  # already fulfilled according to the database
    already_started: int = 0  # a workflow existed although the database did not show it
    not_ours: int = 0  # paid Sessions that are not Onramp enrollments
    started: list[str] = field(default_factory=list)  # Session ids whose enrollment we started
    # Paid, but refused by the fulfilment check (not what we sold) or closed in the ledger.
    refused: int = 0
    ended: int = 0


@workflow.defn
class ReconcileWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileResult:
        result: ReconcileResult = await workflow.execute_activity(
            "reconcile_paid_sessions",
            inp,
            result_type=ReconcileResult,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=5)),
            summary=f"paid Checkout Sessions of the last {inp.lookback_hours:g} h",
        )
        workflow.set_current_details(
            f"checked {result.checked} paid sessions: {result.known} known, "
            f"{result.already_started} already running, {result.not_ours} not ours, "
            f"{result.refused} refused, {result.ended} access ended, "
            f"**{len(result.started)} started**"
        )
        return result
