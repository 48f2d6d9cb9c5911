"""Database queries of the sales funnel report, one function each.

Callers own the transaction, as in `core/repository.py`.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from core.models import (
    AuditEvent,
    Enrollment,
    SeatHold,
    SeatState,
    WaitlistEntry,
    WaitlistState,
)

# ---- funnel --------------------------------------------------------------------------


def enrollments_created_since(session: Session, since: datetime) -> Sequence[Enrollment]:
    return session.exec(
        select(Enrollment)
        .where(col(Enrollment.created_at) >= since)
        .order_by(col(Enrollment.created_at))
    ).all()


def audit_since(session: Session, since: datetime, actions: Sequence[str]) -> Sequence[AuditEvent]:
    return session.exec(
        select(AuditEvent)
        .where(col(AuditEvent.created_at) >= since)
        .where(col(AuditEvent.action).in_(actions))
        .order_by(col(AuditEvent.id))
    ).all()


def cohort_counts(session: Session, cohort_id: int, code: str, since: datetime) -> dict[str, int]:
    """The funnel's counts of one cohort since `since` (support/funnel.py)."""

    def count(model: Any, *where: Any) -> int:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())

    hold = col(SeatHold.cohort_id) == cohort_id
    entry = col(WaitlistEntry.cohort_id) == cohort_id
    counts = {
        "holds": count(
            SeatHold, hold, col(SeatHold.created_at) >= since,
            col(SeatHold.waitlist_entry_id).is_(None),
        ),
        "expiries": count(
            SeatHold, hold, col(SeatHold.updated_at) >= since,
            col(SeatHold.release_reason).in_(("expired", "session_expired")),
        ),
        "conversions": count(
            SeatHold, hold, col(SeatHold.created_at) >= since,
            col(SeatHold.state) == SeatState.TAKEN,
        ),
        "waitlist_joins": count(WaitlistEntry, entry, col(WaitlistEntry.created_at) >= since),
        "offers": count(WaitlistEntry, entry, col(WaitlistEntry.offered_at) >= since),
        "offers_claimed": count(
            WaitlistEntry, entry, col(WaitlistEntry.offered_at) >= since,
            col(WaitlistEntry.state) == WaitlistState.CLAIMED,
        ),
        "offers_passed": count(
            WaitlistEntry, entry, col(WaitlistEntry.updated_at) >= since,
            col(WaitlistEntry.state) == WaitlistState.PASSED,
        ),
    }  # fmt: skip
    audited = {
        "sold_out_payment": "sold_out_payments",
        "checkout_recovery_sent": "recovery_emails",
        "checkout_recovered": "recovered_paid",
    }
    for event in audit_since(session, since, tuple(audited)):
        if event.details.get("cohort") == code:
            key = audited[event.action]
            counts[key] = counts.get(key, 0) + 1
    return counts
