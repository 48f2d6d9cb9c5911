"""Every database query the app makes, one function each. Callers own the transaction."""

import json
import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core.contracts import ACTIVE_STATUSES, UNPAID_STATUSES, Step
from core.models import (
    AuditEvent,
    Enrollment,
    OutboxMessage,
    Project,
    ProjectUnlock,
    RefreshToken,
    SetPasswordToken,
    StripeEvent,
    ToolAccountRecord,
    User,
    utcnow,
)


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


# ---- users ---------------------------------------------------------------------------


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == email)).first()


def username_taken(session: Session, username: str) -> bool:
    return session.exec(select(User.id).where(User.username == username)).first() is not None


def new_username(session: Session, email: str) -> str:
    """A readable, unique username from the email's local part: [a-z][a-z0-9_]{,29}."""
    base = re.sub(r"[^a-z0-9]+", "_", email.split("@", 1)[0].lower()).strip("_")[:24]
    if not base or not base[0].isalpha():
        base = f"u_{base}"[:24]
    candidate = base
    while username_taken(session, candidate):
        candidate = f"{base}_{secrets.token_hex(2)}"
    return candidate


# ---- enrollments ---------------------------------------------------------------------


def get_enrollment(session: Session, enrollment_id: int) -> Enrollment | None:
    return session.get(Enrollment, enrollment_id)


def get_enrollment_by_session(session: Session, checkout_session_id: str) -> Enrollment | None:
    return session.exec(
        select(Enrollment).where(Enrollment.checkout_session_id == checkout_session_id)
    ).first()


_E: sa.Table = Enrollment.__table__  # type: ignore[attr-defined]
_U: sa.Table = User.__table__  # type: ignore[attr-defined]
_T: sa.Table = ToolAccountRecord.__table__  # type: ignore[attr-defined]
_LANDING = (
    sa.select(
        _E.c.id, _E.c.user_id, _E.c.track, _E.c.account_created, _E.c.browser_nonce_hash,
        _E.c.tokens_issued_at, _E.c.status.label("enrollment_row_status"), _U.c.email,
        _U.c.name, _U.c.role, _U.c.enrollment_status, _U.c.is_active, _U.c.email_verified_at,
        _U.c.password_hash.is_not(None).label("has_password"),
        _T.c.tool, _T.c.status, _T.c.url, _T.c.development,
    )
    .select_from(_E.join(_U, _U.c.id == _E.c.user_id).outerjoin(_T, _T.c.user_id == _U.c.id))
    .where(_E.c.checkout_session_id == sa.bindparam("checkout_session_id"))
    .order_by(_T.c.id)
)  # fmt: skip


def landing_rows(conn: sa.Connection, checkout_session_id: str) -> Sequence[Any]:
    """What the success page shows, in one statement (it is polled): the enrollment, its
    student, one row per tool account of the student (tool columns None when there are
    none). No rows: no enrollment with a student for this session."""
    return conn.execute(_LANDING, {"checkout_session_id": checkout_session_id}).all()


# The channel the API LISTENs on; the payload is the Checkout Session id, then optionally
# the steps the activity settled as a JSON list (api.payments.progress.parse_note).
PROGRESS_CHANNEL = "enrollment_progress"


def bump_progress(session: Session, enrollment_id: int, *settled: Step) -> None:
    """A step of this enrollment moved: bump its progress version and, on PostgreSQL, tell
    every API process in the same transaction (NOTIFY is delivered at commit). `settled`:
    steps as the workflow will show them once this activity's completion reaches it, so
    the API can show them now without reading the workflow."""
    table = Enrollment.__table__  # type: ignore[attr-defined]
    session_id = session.execute(
        sa.update(table)
        .where(table.c.id == enrollment_id)
        .values(progress_version=table.c.progress_version + 1)
        .returning(table.c.checkout_session_id)
    ).scalar()
    if session_id is not None and session.get_bind().dialect.name == "postgresql":
        payload = session_id
        if settled:
            steps = [{"key": s.key, "status": s.status, "detail": s.detail} for s in settled]
            payload += " " + json.dumps(steps)
        session.execute(sa.select(sa.func.pg_notify(PROGRESS_CHANNEL, payload)))


def progress_versions(conn: sa.Connection, checkout_session_ids: Sequence[str]) -> dict[str, int]:
    """The progress version of each of these enrollments, in one statement."""
    table = Enrollment.__table__  # type: ignore[attr-defined]
    rows = conn.execute(
        sa.select(table.c.checkout_session_id, table.c.progress_version).where(
            table.c.checkout_session_id.in_(list(checkout_session_ids))
        )
    ).all()
    return {row[0]: int(row[1]) for row in rows}


def viewer_row(conn: sa.Connection, checkout_session_id: str) -> Any:
    """Who may see this enrollment's step details: its browser nonce and its student."""
    return conn.execute(
        sa.select(
            col(Enrollment.browser_nonce_hash),
            col(Enrollment.user_id),
            col(User.is_active),
        )
        .select_from(Enrollment)
        .join(User, col(User.id) == col(Enrollment.user_id), isouter=True)
        .where(col(Enrollment.checkout_session_id) == checkout_session_id)
    ).first()


def find_active_enrollment(
    session: Session, user_id: int, track: str, excluding_session: str
) -> Enrollment | None:
    return session.exec(
        select(Enrollment)
        .where(Enrollment.user_id == user_id)
        .where(Enrollment.track == track)
        .where(col(Enrollment.status).in_(ACTIVE_STATUSES))
        .where(Enrollment.checkout_session_id != excluding_session)
        .order_by(col(Enrollment.id))
    ).first()


def list_enrollments(
    session: Session,
    *,
    status: str | None = None,
    email: str | None = None,
    track: str | None = None,
    needs_attention: bool | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> Sequence[Enrollment]:
    query = select(Enrollment).order_by(col(Enrollment.id).desc()).limit(limit)
    if status:
        query = query.where(Enrollment.status == status)
    if email:
        query = query.where(Enrollment.email == email)
    if track:
        query = query.where(Enrollment.track == track)
    if needs_attention is not None:
        query = query.where(Enrollment.needs_attention == needs_attention)
    if since:
        query = query.where(col(Enrollment.created_at) >= since)
    return session.exec(query).all()


def mark_unpaid_enrollment(session: Session, checkout_session_id: str, status: str) -> int:
    """Move an enrollment that has not been paid; returns how many rows moved (0 or 1)."""
    result = session.execute(
        sa.update(Enrollment)
        .where(col(Enrollment.checkout_session_id) == checkout_session_id)
        .where(col(Enrollment.status).in_(UNPAID_STATUSES))
        .values(status=status, updated_at=utcnow())
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def claim_auto_login(session: Session, enrollment_id: int, not_before: datetime) -> bool:
    """Atomically mark tokens as issued; only the first caller within the window wins."""
    result = session.execute(
        sa.update(Enrollment)
        .where(col(Enrollment.id) == enrollment_id)
        .where(col(Enrollment.tokens_issued_at).is_(None))
        .where(col(Enrollment.account_created).is_(True))
        .where(col(Enrollment.completed_at) >= not_before)
        .values(tokens_issued_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


# ---- tools, projects -----------------------------------------------------------------


def get_tool_account(session: Session, user_id: int, tool: str) -> ToolAccountRecord | None:
    return session.exec(
        select(ToolAccountRecord)
        .where(ToolAccountRecord.user_id == user_id)
        .where(ToolAccountRecord.tool == tool)
    ).first()


def list_tool_accounts(session: Session, user_id: int) -> Sequence[ToolAccountRecord]:
    return session.exec(
        select(ToolAccountRecord)
        .where(ToolAccountRecord.user_id == user_id)
        .order_by(col(ToolAccountRecord.id))
    ).all()


def get_first_project(session: Session, track: str) -> Project | None:
    return session.exec(
        select(Project).where(Project.track == track).order_by(col(Project.position))
    ).first()


def list_projects(session: Session, track: str) -> Sequence[Project]:
    return session.exec(
        select(Project).where(Project.track == track).order_by(col(Project.position))
    ).all()


def unlocked_project_ids(session: Session, user_id: int) -> set[int]:
    rows = session.exec(select(ProjectUnlock.project_id).where(ProjectUnlock.user_id == user_id))
    return set(rows.all())


def unlock_project(session: Session, user_id: int, project_id: int) -> bool:
    stmt = (
        _insert(session, ProjectUnlock)
        .values(user_id=user_id, project_id=project_id, unlocked_at=utcnow())
        .on_conflict_do_nothing()
        .returning(ProjectUnlock.id)  # type: ignore[arg-type]
    )
    # RETURNING, not rowcount: SQLAlchemy 2.1 reports -1 for ON CONFLICT inserts.
    return session.execute(stmt).first() is not None


# ---- audit and Stripe events ---------------------------------------------------------


def add_audit(
    session: Session,
    action: str,
    *,
    actor: str = "system",
    enrollment_id: int | None = None,
    user_id: int | None = None,
    **details: Any,
) -> AuditEvent:
    event = AuditEvent(
        enrollment_id=enrollment_id, user_id=user_id, actor=actor, action=action, details=details
    )
    session.add(event)
    return event


def count_audit(session: Session, enrollment_id: int, action: str, **match: Any) -> int:
    rows = session.exec(
        select(AuditEvent)
        .where(AuditEvent.enrollment_id == enrollment_id)
        .where(AuditEvent.action == action)
    ).all()
    return sum(1 for r in rows if all(r.details.get(k) == v for k, v in match.items()))


def audit_exists(session: Session, enrollment_id: int, action: str, **match: Any) -> bool:
    return count_audit(session, enrollment_id, action, **match) > 0


def list_audit(session: Session, enrollment_id: int) -> Sequence[AuditEvent]:
    return session.exec(
        select(AuditEvent)
        .where(AuditEvent.enrollment_id == enrollment_id)
        .order_by(col(AuditEvent.id))
    ).all()


def record_stripe_event(
    session: Session,
    event_id: str,
    type_: str,
    created: int | None,
    checkout_session_id: str | None,
) -> bool:
    """Store a verified event once; True the first time, False for a redelivery."""
    stmt = (
        _insert(session, StripeEvent)
        .values(
            id=event_id,
            type=type_,
            stripe_created=created,
            checkout_session_id=checkout_session_id,
            outcome="received",
            deliveries=1,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(StripeEvent.id)  # type: ignore[arg-type]
    )
    if session.execute(stmt).first() is not None:
        return True
    session.execute(
        sa.update(StripeEvent)
        .where(col(StripeEvent.id) == event_id)
        .values(deliveries=StripeEvent.deliveries + 1)
    )
    return False


def set_stripe_event_outcome(session: Session, event_id: str, outcome: str) -> None:
    session.execute(
        sa.update(StripeEvent)
        .where(col(StripeEvent.id) == event_id)
        .values(outcome=outcome[:64], processed_at=utcnow())
    )


# ---- pages ---------------------------------------------------------------------------


def list_user_enrollments(session: Session, user_id: int) -> Sequence[Enrollment]:
    """Every enrollment attached to a student's account, newest first."""
    return session.exec(
        select(Enrollment).where(Enrollment.user_id == user_id).order_by(col(Enrollment.id).desc())
    ).all()


def get_outbox_message(session: Session, message_key: str) -> OutboxMessage | None:
    return session.exec(
        select(OutboxMessage).where(OutboxMessage.message_key == message_key)
    ).first()


def count_outbox_messages(session: Session, key_prefix: str) -> int:
    return session.exec(
        select(sa.func.count())
        .select_from(OutboxMessage)
        .where(col(OutboxMessage.message_key).startswith(key_prefix, autoescape=True))
    ).one()


def mark_outbox_sent(session: Session, message_key: str) -> None:
    session.execute(
        sa.update(OutboxMessage)
        .where(col(OutboxMessage.message_key) == message_key)
        .where(col(OutboxMessage.sent_at).is_(None))
        .values(sent_at=utcnow())
    )


# ---- access changes (revocations, refunds, support) ----------------------------------


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
