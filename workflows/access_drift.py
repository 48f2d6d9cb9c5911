"""AccessDriftWorkflow: what each tool really holds agrees with the ledger. Run by the
`access-drift` Schedule (and `onramp-support drift`).

A revocation removes access at the moment of the refund; this makes it true afterwards too.
For each tool in turn, one activity lists what the tool holds (`ToolAdapter.holders`),
compares it with who the database says should have it, and repairs what is safe: access
held by a student whose enrollment ended (refunded, revoked, cancelled) or by an unknown
username is deprovisioned; a missing tool that is safe to make again (a Prefect pool) is
provisioned for a READY student. Everything else is reported to support. A tool that cannot
be listed is reported in the result and nothing of it is changed. The changes of one run are
bounded (`max_changes`; the rest waits for the next run). The activities are in
`activities/access_drift.py`.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from core.tracks import ALL_TOOLS

SCHEDULE_ID = "access-drift"

# What a found difference is.
HELD_ENDED = "held_after_access_ended"  # the student's enrollment ended (or is unknown)
HELD_NOT_ENTITLED = "held_not_entitled"  # held, but nothing says why, and nothing ended
MISSING = "missing"  # a READY student's tool is gone (or disabled) in the tool

# What the run did about it.
DEPROVISIONED = "deprovisioned"
PROVISIONED = "provisioned"
REPORTED = "reported"  # to support: not safe to repair, or the repair failed
WOULD_DEPROVISION = "would_deprovision"  # dry run
WOULD_PROVISION = "would_provision"  # dry run
DEFERRED = "deferred"  # over this run's budget: the next run repairs it


@dataclass
class DriftInput:
    dry_run: bool = False
    actor: str = "schedule"
    max_changes: int = 100  # tool calls that change something, per run
    tools: list[str] = field(default_factory=lambda: list(ALL_TOOLS))


@dataclass
class ToolDriftInput:
    tool: str
    dry_run: bool
    budget: int
    actor: str


@dataclass
class DriftItem:
    tool: str
    username: str
    problem: str  # HELD_ENDED | HELD_NOT_ENTITLED | MISSING
    action: str  # DEPROVISIONED | PROVISIONED | REPORTED | WOULD_* | DEFERRED
    detail: str = ""
    user_id: int | None = None
    enrollment_id: int | None = None
    checkout_session_id: str = ""


@dataclass
class ToolDrift:
    tool: str
    listed: bool = True
    error: str = ""  # why the tool could not be listed
    held: int = 0  # accounts giving access in the tool
    entitled: int = 0  # students the ledger says should have it
    changes: int = 0  # tool calls made that changed something
    items: list[DriftItem] = field(default_factory=list)


@dataclass
class DriftReport:
    inp: DriftInput
    tools: list[ToolDrift]


@dataclass
class DriftResult:
    dry_run: bool
    actor: str
    tools: list[ToolDrift] = field(default_factory=list)
    repaired: int = 0
    reported: int = 0
    deferred: int = 0
    unlisted: list[str] = field(default_factory=list)  # tools that could not be listed
    notified: bool = False  # support was mailed about new findings


@workflow.defn
class AccessDriftWorkflow:
    @workflow.run
    async def run(self, inp: DriftInput) -> DriftResult:
        budget = max(inp.max_changes, 0)
        checked: list[ToolDrift] = []
        for tool in inp.tools:
            try:
                drift: ToolDrift = await workflow.execute_activity(
                    "check_tool_drift",
                    ToolDriftInput(tool, inp.dry_run, budget, inp.actor),
                    result_type=ToolDrift,
                    start_to_close_timeout=timedelta(minutes=20),
                    heartbeat_timeout=timedelta(minutes=2),
                    retry_policy=RetryPolicy(
                        maximum_attempts=3, initial_interval=timedelta(seconds=5)
                    ),
                    summary=f"{'dry run: ' if inp.dry_run else ''}{tool}",
                )
            except ActivityError as err:
                cause = err.cause or err
                drift = ToolDrift(tool, listed=False, error=f"check failed: {cause}"[:500])
            budget = max(budget - drift.changes, 0)
            checked.append(drift)
        result: DriftResult = await workflow.execute_activity(
            "report_access_drift",
            DriftReport(inp, checked),
            result_type=DriftResult,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=5)),
        )
        workflow.set_current_details(
            f"{'dry run: ' if inp.dry_run else ''}**{result.repaired} repaired**, "
            f"{result.reported} reported, {result.deferred} deferred"
            + (f"; not listed: {', '.join(result.unlisted)}" if result.unlisted else "")
        )
        return result
