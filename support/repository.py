"""Database queries of the sales funnel report, one function each.

Callers own the transaction, as in `core/repository.py`.
"""

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from core.models import (
    AuditEvent,
    Enrollment,
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
