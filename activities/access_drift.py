"""Access drift: what the tools hold against what the ledger grants, repaired or reported.

`AccessDriftActivities` are AccessDriftWorkflow's activities; `ensure_access_drift_schedule`
makes the worker's boot create, update or (interval 0) delete the `access-drift` Schedule.

Who should hold a tool: a user with an enrollment in `ACTIVE_STATUSES` whose track includes
it, unless support skipped that tool. Removal is only for access whose enrollment ended
(`ACCESS_ENDED_STATUSES`), or a username Onramp does not know; a student with a payment in
flight (PAID, PAYMENT_PENDING) is left alone, and the ledger is read again right before each
deprovision, so an enrollment that started meanwhile is not touched. Re-creation is only
for a READY enrollment whose tool account the ledger records as ready, and only for tools
that are safe to make again (`RECREATE_SAFE`: a fresh Prefect pool loses nothing; a new
database role, Superset user or workspace would hand the student a new secret or an empty
workspace, so support decides).
"""

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, or_, select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
)
from temporalio.service import RPCError, RPCStatusCode

from core import metrics
from core import repository as repo
from core.contracts import ACCESS_ENDED_STATUSES, EnrollmentStatus
from core.crypto import SecretBox
from core.db import session_scope
from core.models import AuditEvent, Enrollment, ToolAccountRecord, User, utcnow
from core.settings import Settings
from core.temporal import ensure_schedule, interval_schedule
from core.tools.base import ToolAdapter, ToolError, ToolSubject
from core.tracks import TOOL_PREFECT, TRACKS
from workflows.access_drift import (
    DEFERRED,
    DEPROVISIONED,
    HELD_ENDED,
    HELD_NOT_ENTITLED,
    MISSING,
    PROVISIONED,
    REPORTED,
    SCHEDULE_ID,
    WOULD_DEPROVISION,
    WOULD_PROVISION,
    AccessDriftWorkflow,
    DriftInput,
    DriftItem,
    DriftReport,
    DriftResult,
    ToolDrift,
    ToolDriftInput,
)

if TYPE_CHECKING:
    from core.mail import Mailer

log = logging.getLogger(__name__)

# Tools whose missing account is made again without asking anyone.
RECREATE_SAFE = frozenset({TOOL_PREFECT})
# A payment on its way to provisioning: its student's tools are not drift yet.
IN_FLIGHT_STATUSES = (EnrollmentStatus.PAID, EnrollmentStatus.PAYMENT_PENDING)
UNLISTED = "unlisted"  # the problem (and metric action) of a tool that could not be listed
# A finding support was told about is not mailed or audited again for this long.
REPORT_AGAIN_AFTER = timedelta(hours=24)
AUDITED_ITEMS = 200  # at most this many findings are named in the run's audit event


def tracks_with(tool: str) -> list[str]:
    return [code for code, track in TRACKS.items() if tool in track.tools]


@dataclass
class Standing:
    """What the ledger says about one username and one tool."""

    verdict: str  # "entitled" | "skipped" | "in_flight" | "ended" | "unknown" | "none"
    user_id: int | None = None
    subject: ToolSubject | None = None
    enrollment_id: int | None = None  # the enrollment behind the verdict
    checkout_session_id: str = ""
    status: str = ""  # that enrollment's status


def standing(s: Session, tool: str, username: str) -> Standing:
    """Whether `username` may hold `tool` now, from the database alone."""
    user = s.exec(select(User).where(User.username == username)).first()
    if user is None or user.id is None:
        return Standing("unknown")
    subject = ToolSubject(user.id, user.username, user.email, user.name, "")
    enrollments = s.exec(
        select(Enrollment)
        .where(or_(col(Enrollment.user_id) == user.id, col(Enrollment.email) == user.email))
        .order_by(col(Enrollment.id).desc())
    ).all()
    tracks = set(tracks_with(tool))

    def of(verdict: str, e: Enrollment) -> Standing:
        return Standing(
            verdict,
            user.id,
            dataclasses.replace(subject, enrollment_id=e.checkout_session_id),
            e.id,
            e.checkout_session_id,
            str(e.status),
        )

    ours = [e for e in enrollments if e.track in tracks]
    active = [e for e in ours if e.status in repo.ACTIVE_STATUSES]
    if active:
        record = repo.get_tool_account(s, user.id, tool)
        return of(
            "skipped" if record is not None and record.status == "skipped" else "entitled",
            active[0],
        )
    flight = [e for e in ours if e.status in IN_FLIGHT_STATUSES]
    if flight:
        return of("in_flight", flight[0])
    ended = [e for e in ours if e.status in ACCESS_ENDED_STATUSES]
    if ended:
        return of("ended", ended[0])
    return Standing("none", user.id, subject, status="")


def ready_students(s: Session, tool: str) -> list[tuple[User, Enrollment, ToolAccountRecord]]:
    """READY enrollments including `tool` whose tool account the ledger records as ready."""
    rows = s.exec(
        select(User, Enrollment, ToolAccountRecord)
        .join(Enrollment, col(Enrollment.user_id) == col(User.id))
        .join(ToolAccountRecord, col(ToolAccountRecord.user_id) == col(User.id))
        .where(col(Enrollment.status) == EnrollmentStatus.READY)
        .where(col(Enrollment.track).in_(tracks_with(tool)))
        .where(col(ToolAccountRecord.tool) == tool)
        .where(col(ToolAccountRecord.status) == "ready")
        .order_by(col(Enrollment.id))
    ).all()
    seen: set[int] = set()
    out = []
    for user, enrollment, record in rows:
        if user.id is not None and user.id not in seen:
            seen.add(user.id)
            out.append((user, enrollment, record))
    return out


class AccessDriftActivities:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        adapters: Mapping[str, ToolAdapter],
        mailer: "Mailer",
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.adapters = adapters
        self.mailer = mailer
        self.box = SecretBox(settings.tool_secret_key)

    def all(self) -> list[Callable[..., Any]]:
        return [self.check_tool_drift, self.report_access_drift]

    # ---- one tool --------------------------------------------------------------------

    @activity.defn
    def check_tool_drift(self, inp: ToolDriftInput) -> ToolDrift:
        adapter = self.adapters.get(inp.tool)
        if adapter is None:
            return ToolDrift(inp.tool, listed=False, error="no adapter for this tool")
        try:
            held = adapter.holders()
        except ToolError as err:
            log.warning("access drift: %s cannot be listed: %s", inp.tool, err)
            return ToolDrift(inp.tool, listed=False, error=str(err)[:500] or type(err).__name__)
        activity.heartbeat(f"{inp.tool}: {len(held)} listed")
        live = {h.username for h in held if h.status == "ready"}
        drift = ToolDrift(inp.tool, held=len(live))

        # Held, but should it be?
        for username in sorted(live):
            with session_scope(self.engine) as s:
                found = standing(s, inp.tool, username)
            if found.verdict in ("entitled", "in_flight"):
                continue
            if found.verdict in ("ended", "unknown"):
                self._remove(adapter, inp, drift, username)
            else:  # skipped by support, or a user with nothing that grants or ended it
                drift.items.append(
                    self._item(
                        inp.tool,
                        username,
                        HELD_NOT_ENTITLED,
                        REPORTED,
                        found,
                        "support skipped this tool"
                        if found.verdict == "skipped"
                        else "no enrollment grants or ended it",
                    )
                )

        # Granted, but gone?
        with session_scope(self.engine) as s:
            students = [
                (u.username, u.id, e.id, e.checkout_session_id)
                for u, e, _ in ready_students(s, inp.tool)
            ]
        drift.entitled = len(students)
        for username, _, _, _ in students:
            if username not in live:
                self._recreate(adapter, inp, drift, username)
        return drift

    def _remove(
        self, adapter: ToolAdapter, inp: ToolDriftInput, drift: ToolDrift, username: str
    ) -> None:
        # Read again now: an enrollment may have started since the first look.
        with session_scope(self.engine) as s:
            found = standing(s, inp.tool, username)
        if found.verdict not in ("ended", "unknown"):
            return
        detail = (
            "unknown username"
            if found.verdict == "unknown"
            else f"enrollment {found.checkout_session_id} is {found.status}"
        )
        if inp.dry_run:
            drift.items.append(
                self._item(inp.tool, username, HELD_ENDED, WOULD_DEPROVISION, found, detail)
            )
            return
        if drift.changes >= inp.budget:
            drift.items.append(self._item(inp.tool, username, HELD_ENDED, DEFERRED, found, detail))
            return
        subject = found.subject or ToolSubject(0, username, "", "", "")
        drift.changes += 1
        activity.heartbeat(f"{inp.tool}: deprovisioning {username}")
        try:
            adapter.deprovision(subject)
        except ToolError as err:
            drift.items.append(
                self._item(
                    inp.tool, username, HELD_ENDED, REPORTED, found, f"{detail}; deprovision: {err}"
                )
            )
            return
        with session_scope(self.engine) as s:
            # Reinstated while we deprovisioned (a dispute won)? Then the ledger keeps what
            # the reinstatement wrote, and the next run finds the tool missing.
            now = standing(s, inp.tool, username)
            if found.user_id is not None and now.verdict in ("ended", "unknown"):
                record = repo.get_tool_account(s, found.user_id, inp.tool)
                if record is not None and record.status != "disabled":
                    record.status = "disabled"
                    record.updated_at = utcnow()
            _audit_repaired(s, inp, found, username, HELD_ENDED, DEPROVISIONED, detail)
        log.warning("access drift: %s of %s deprovisioned (%s)", inp.tool, username, detail)
        drift.items.append(self._item(inp.tool, username, HELD_ENDED, DEPROVISIONED, found, detail))

    def _recreate(
        self, adapter: ToolAdapter, inp: ToolDriftInput, drift: ToolDrift, username: str
    ) -> None:
        with session_scope(self.engine) as s:
            found = standing(s, inp.tool, username)
            record = (
                repo.get_tool_account(s, found.user_id, inp.tool)
                if found.user_id is not None
                else None
            )
            ready = (
                found.verdict == "entitled"
                and found.status == EnrollmentStatus.READY
                and record is not None
                and record.status == "ready"
            )
        if not ready:
            return  # changed meanwhile (revoked, being provisioned): not drift
        if inp.tool not in RECREATE_SAFE:
            drift.items.append(
                self._item(
                    inp.tool,
                    username,
                    MISSING,
                    REPORTED,
                    found,
                    "not made again automatically (a new account would change the "
                    "student's secret or lose their work)",
                )
            )
            return
        if inp.dry_run:
            drift.items.append(self._item(inp.tool, username, MISSING, WOULD_PROVISION, found))
            return
        if drift.changes >= inp.budget:
            drift.items.append(self._item(inp.tool, username, MISSING, DEFERRED, found))
            return
        assert found.subject is not None and found.user_id is not None
        drift.changes += 1
        activity.heartbeat(f"{inp.tool}: provisioning {username}")
        try:
            account = adapter.provision(
                found.subject, progress=lambda note: activity.heartbeat(note)
            )
        except ToolError as err:
            drift.items.append(
                self._item(inp.tool, username, MISSING, REPORTED, found, f"provision: {err}")
            )
            return
        with session_scope(self.engine) as s:
            record = repo.get_tool_account(s, found.user_id, inp.tool)
            if record is not None:
                record.status = account.status
                record.url = account.url
                record.username = account.username
                record.details = dict(account.details)
                if account.secret is not None:
                    record.secret_encrypted = self.box.encrypt(account.secret)
                record.updated_at = utcnow()
            _audit_repaired(s, inp, found, username, MISSING, PROVISIONED, "made again")
            if found.enrollment_id is not None:
                repo.bump_progress(s, found.enrollment_id)
        log.warning("access drift: %s of %s was missing; made again", inp.tool, username)
        drift.items.append(self._item(inp.tool, username, MISSING, PROVISIONED, found))

    @staticmethod
    def _item(
        tool: str, username: str, problem: str, action: str, found: Standing, detail: str = ""
    ) -> DriftItem:
        return DriftItem(
            tool,
            username,
            problem,
            action,
            detail[:500],
            found.user_id,
            found.enrollment_id,
            found.checkout_session_id,
        )

    # ---- the run -------------------------------------------------------------------

    @activity.defn
    def report_access_drift(self, report: DriftReport) -> DriftResult:
        """Audit the run and tell support (once a day per finding) what it cannot repair."""
        inp = report.inp
        result = DriftResult(inp.dry_run, inp.actor, report.tools)
        items = [item for tool in report.tools for item in tool.items]
        result.repaired = sum(i.action in (DEPROVISIONED, PROVISIONED) for i in items)
        result.reported = sum(i.action == REPORTED for i in items)
        result.deferred = sum(i.action == DEFERRED for i in items)
        result.unlisted = [t.tool for t in report.tools if not t.listed]
        unlisted = [(t.tool, t.error) for t in report.tools if not t.listed]
        fresh: list[DriftItem] = []
        fresh_unlisted: list[tuple[str, str]] = []
        if not inp.dry_run:
            with session_scope(self.engine) as s:
                known = self._reported_since(s, utcnow() - REPORT_AGAIN_AFTER)
            for item in items:
                key = (item.tool, item.username, item.problem)
                if item.action == REPORTED and key not in known:
                    known.add(key)
                    fresh.append(item)
            fresh_unlisted = [(t, e) for t, e in unlisted if (t, "", UNLISTED) not in known]
            # Mail first, audit after: a retry after a failed send finds nothing audited and
            # sends again (the same Message-ID); one after a failed audit sends a duplicate
            # receivers drop.
            if fresh or fresh_unlisted:
                result.notified = self._notify(inp, fresh, fresh_unlisted)
        with session_scope(self.engine) as s:
            for item in fresh:
                repo.add_audit(
                    s,
                    "access_drift_found",
                    actor=inp.actor,
                    enrollment_id=item.enrollment_id,
                    user_id=item.user_id,
                    tool=item.tool,
                    username=item.username,
                    problem=item.problem,
                    detail=item.detail,
                )
            for tool, error in fresh_unlisted:
                repo.add_audit(
                    s,
                    "access_drift_found",
                    actor=inp.actor,
                    tool=tool,
                    username="",
                    problem=UNLISTED,
                    detail=error,
                )
            repo.add_audit(
                s,
                "access_drift_run",
                actor=inp.actor,
                dry_run=inp.dry_run,
                repaired=result.repaired,
                reported=result.reported,
                deferred=result.deferred,
                unlisted=result.unlisted,
                notified=result.notified,
                findings=[
                    {
                        "tool": i.tool,
                        "username": i.username,
                        "problem": i.problem,
                        "action": i.action,
                    }
                    for i in items[:AUDITED_ITEMS]
                ],
            )
        if not inp.dry_run:
            for item in items:
                metrics.ACCESS_DRIFT.labels(item.tool, item.action).inc()
            for tool in result.unlisted:
                metrics.ACCESS_DRIFT.labels(tool, UNLISTED).inc()
        return result

    @staticmethod
    def _reported_since(s: Session, since: datetime) -> set[tuple[Any, Any, Any]]:
        """(tool, username, problem) of the findings support was told about since then."""
        rows = s.exec(
            select(AuditEvent)
            .where(AuditEvent.action == "access_drift_found")
            .where(col(AuditEvent.created_at) >= since)
        ).all()
        return {
            (r.details.get("tool"), r.details.get("username"), r.details.get("problem"))
            for r in rows
        }

    def _notify(
        self, inp: DriftInput, fresh: list[DriftItem], unlisted: list[tuple[str, str]]
    ) -> bool:
        info = activity.info()
        self.mailer.send(
            to=self.settings.support_email,
            subject=f"[Onramp] Access drift needs attention: {len(fresh)} finding(s)"
            + (f", {len(unlisted)} tool(s) not listed" if unlisted else ""),
            template="access_drift",
            # One message per run: a retried activity sends the same Message-ID.
            message_key=f"drift-{info.workflow_id}-{info.workflow_run_id}",
            items=fresh,
            unlisted=unlisted,
            actor=inp.actor,
        )
        return True


def _audit_repaired(
    s: Session,
    inp: ToolDriftInput,
    found: Standing,
    username: str,
    problem: str,
    done: str,
    detail: str,
) -> None:
    """The one audit event of a repair (deprovisioned or made again)."""
    repo.add_audit(
        s,
        "access_drift_repaired",
        actor=inp.actor,
        enrollment_id=found.enrollment_id,
        user_id=found.user_id,
        tool=inp.tool,
        username=username,
        problem=problem,
        done=done,
        detail=detail,
    )


# ---- the Schedule --------------------------------------------------------------------


def access_drift_schedule(settings: Settings) -> Schedule:
    return interval_schedule(
        AccessDriftWorkflow.run,
        DriftInput(max_changes=settings.access_drift_max_changes),
        schedule_id=SCHEDULE_ID,
        task_queue=settings.temporal_task_queue,
        every=timedelta(minutes=settings.access_drift_interval_minutes),
        run_timeout=timedelta(hours=2),
        summary="Compare what the tools hold with the ledger; repair or report",
    )


async def ensure_access_drift_schedule(client: Client, settings: Settings) -> None:
    """Create the Schedule or bring it to these settings (pause state kept); an interval of
    0 deletes it."""
    handle = client.get_schedule_handle(SCHEDULE_ID)
    if settings.access_drift_interval_minutes <= 0:
        try:
            await handle.delete()
            log.info("deleted schedule %s (ACCESS_DRIFT_INTERVAL_MINUTES=0)", SCHEDULE_ID)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        return
    await ensure_schedule(client, SCHEDULE_ID, access_drift_schedule(settings))
