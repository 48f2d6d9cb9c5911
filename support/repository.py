"""Database queries of the operations side (support, revocations, funnel), one function each.

Callers own the transaction, as in `core/repository.py`.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from core.contracts import ACTIVE_STATUSES
from core.models import (
    AuditEvent,
    Enrollment,
    RefreshToken,
    SetPasswordToken,
    ToolAccountRecord,
    utcnow,
)


def get_enrollment_by_payment_intent(session: Session, payment_intent_id: str) -> Enrollment | None:
    return session.exec(
        select(Enrollment).where(Enrollment.payment_intent_id == payment_intent_id)
    ).first()


def other_active_enrollments(
    session: Session, user_id: int, excluding_enrollment_id: int
) -> Sequence[Enrollment]:
    return session.exec(
        select(Enrollment)
        .where(Enrollment.user_id == user_id)
        .where(col(Enrollment.id) != excluding_enrollment_id)
        .where(col(Enrollment.status).in_(ACTIVE_STATUSES))
    ).all()


def tool_accounts_of_enrollment(
    session: Session, enrollment_id: int
) -> Sequence[ToolAccountRecord]:
    return session.exec(
        select(ToolAccountRecord)
        .where(ToolAccountRecord.enrollment_id == enrollment_id)
        .order_by(col(ToolAccountRecord.id))
    ).all()


def revoke_refresh_tokens(session: Session, user_id: int) -> int:
    result = session.execute(
        sa.update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id)
        .where(col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def expire_welcome_tokens(session: Session, user_id: int) -> None:
    """A resent welcome email makes the earlier set-password links useless."""
    session.execute(
        sa.update(SetPasswordToken)
        .where(col(SetPasswordToken.user_id) == user_id)
        .where(col(SetPasswordToken.used_at).is_(None))
        .values(used_at=utcnow())
    )


def audit_with(session: Session, enrollment_id: int, action: str) -> Sequence[AuditEvent]:
    return session.exec(
        select(AuditEvent)
        .where(AuditEvent.enrollment_id == enrollment_id)
        .where(AuditEvent.action == action)
        .order_by(col(AuditEvent.id))
    ).all()


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
