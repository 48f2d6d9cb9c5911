"""Database tables (SQLModel). Alembic migrations in `migrations/` target this metadata."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from core.contracts import EnrollmentStatus

# Explicit constraint names so migrations are stable on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps are UTC and time-zone aware on every database (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _ts(nullable: bool = False, **kw: Any) -> Any:
    return Field(
        default_factory=utcnow if not nullable else None,
        sa_column_kwargs={},
        sa_type=UTCDateTime,  # type: ignore[call-overload]
        nullable=nullable,
        **kw,
    )


class Role(StrEnum):
    STUDENT = "student"
    STAFF = "staff"


class User(SQLModel, table=True):
    __tablename__ = "user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    username: str = Field(max_length=40, unique=True)
    name: str = Field(max_length=100)
    password_hash: str | None = Field(default=None, max_length=255)  # None: not usable
    role: str = Field(default=Role.STUDENT, max_length=16)
    track: str | None = Field(default=None, max_length=8)
    enrollment_status: str = Field(default=EnrollmentStatus.ENROLLED, max_length=32)
    payment_verified: bool = False
    is_active: bool = True
    # When the owner of the email proved it (spent a welcome or reset link). Until then
    # whoever paid with the address may hold its sessions; the owner's proof ends them.
    email_verified_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()

    @property
    def email_proven(self) -> bool:
        """A password is only ever set through a link mailed to the address (or by support,
        for staff): holding one proves the email as much as the timestamp does."""
        return self.email_verified_at is not None or self.password_hash is not None


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollment"

    id: int | None = Field(default=None, primary_key=True)
    checkout_session_id: str = Field(max_length=255, unique=True)
    workflow_id: str = Field(max_length=300)
    email: str = Field(max_length=320, index=True)
    name: str = Field(max_length=100)
    track: str = Field(max_length=8)
    status: str = Field(default=EnrollmentStatus.CHECKOUT_CREATED, max_length=32, index=True)
    amount: int | None = None  # smallest currency unit, as Stripe reports it
    currency: str | None = Field(default=None, max_length=3)
    payment_intent_id: str | None = Field(default=None, max_length=255, index=True)
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    # True only when this payment created the account: the only case tokens may follow.
    account_created: bool = False
    browser_nonce_hash: str | None = Field(default=None, max_length=64)
    tokens_issued_at: datetime | None = _ts(nullable=True)
    needs_attention: bool = False
    attention_reason: str | None = Field(default=None, max_length=1000)
    payment_verified: bool = False
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    paid_at: datetime | None = _ts(nullable=True)
    completed_at: datetime | None = _ts(nullable=True)
    # Bumped by each activity that moves a step (core.repository.bump_progress).
    progress_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class ToolAccountRecord(SQLModel, table=True):
    __tablename__ = "tool_account"
    __table_args__ = (sa.UniqueConstraint("user_id", "tool", name="uq_tool_account_user_tool"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollment.id")
    tool: str = Field(max_length=32)
    status: str = Field(max_length=32)  # ready | disabled | absent | failed | skipped
    url: str = Field(default="", max_length=1000)
    username: str | None = Field(default=None, max_length=255)
    secret_encrypted: str | None = Field(default=None, max_length=2000)
    development: bool = False
    details: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Project(SQLModel, table=True):
    __tablename__ = "project"
    __table_args__ = (sa.UniqueConstraint("track", "position", name="uq_project_track_position"),)

    id: int | None = Field(default=None, primary_key=True)
    track: str = Field(max_length=8)
    position: int
    slug: str = Field(max_length=100, unique=True)
    title: str = Field(max_length=200)
    guide: str = Field(max_length=4000)


class ProjectUnlock(SQLModel, table=True):
    __tablename__ = "project_unlock"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "project_id", name="uq_project_unlock_user_project"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    project_id: int = Field(foreign_key="project.id")
    unlocked_at: datetime = _ts()


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollment.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    actor: str = Field(max_length=255)  # "system", "stripe", "staff:<email>", ...
    action: str = Field(max_length=64, index=True)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    created_at: datetime = _ts()


class StripeEvent(SQLModel, table=True):
    """Every verified webhook event, once: the id is Stripe's own."""

    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100, index=True)
    checkout_session_id: str | None = Field(default=None, max_length=255, index=True)
    stripe_created: int | None = None
    outcome: str = Field(default="received", max_length=64)
    deliveries: int = 1
    received_at: datetime = _ts()
    processed_at: datetime | None = _ts(nullable=True)


class SetPasswordToken(SQLModel, table=True):
    """Single-use, expiring link token from the welcome email; only its hash is stored."""

    __tablename__ = "set_password_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    purpose: str = Field(default="welcome", max_length=32)
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class OutboxMessage(SQLModel, table=True):
    """An email committed with what it carries (a set-password token) before it is sent:
    every retry sends these stored bytes, so each delivered copy has the same, live link."""

    __tablename__ = "outbox_message"

    id: int | None = Field(default=None, primary_key=True)
    message_key: str = Field(max_length=255, unique=True)  # also its Message-ID's left part
    enrollment_id: int | None = Field(default=None, foreign_key="enrollment.id", index=True)
    recipient: str = Field(max_length=320)
    kind: str = Field(max_length=32)
    raw: str = Field(sa_type=sa.Text)  # the whole RFC 5322 message
    created_at: datetime = _ts()
    sent_at: datetime | None = _ts(nullable=True)


class RefreshToken(SQLModel, table=True):
    """Refresh tokens are single-use; reuse of a rotated one revokes its whole family."""

    __tablename__ = "refresh_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    jti: str = Field(max_length=64, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    family: str = Field(max_length=64, index=True)
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class CohortState(StrEnum):
    """What staff set. "sold out" is not stored: it is an on-sale cohort with no seat left."""

    DRAFT = "draft"
    ON_SALE = "on_sale"
    CLOSED = "closed"
    RUNNING = "running"


class Cohort(SQLModel, table=True):
    """A class of one track: a start date, a size, a sales window, and its seat ledger.

    `held` (seats held by open checkouts and waitlist offers) and `taken` (paid seats) move
    only through the conditional UPDATEs of `core/cohorts/repository.py`, in the same
    transaction as the `seat_hold` row they count; the CHECK constraint makes an oversold
    cohort impossible to write, whatever the code does."""

    __tablename__ = "cohort"
    __table_args__ = (
        sa.CheckConstraint("held >= 0 AND taken >= 0", name="seats_not_negative"),
        sa.CheckConstraint("held + taken <= size", name="seats_within_size"),
    )

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=40, unique=True)
    track: str = Field(max_length=8, index=True)
    starts_at: datetime = _ts()
    size: int
    held: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    taken: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    sales_open_at: datetime = _ts()
    sales_close_at: datetime | None = _ts(nullable=True)  # None: on sale until closed
    state: str = Field(default=CohortState.DRAFT, max_length=16)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class SeatState(StrEnum):
    HELD = "held"  # an open checkout or a waitlist offer holds it until expires_at
    TAKEN = "taken"  # paid: the enrollment's seat
    RELEASED = "released"  # given back (expired, cancelled, refunded before the start)


class SeatHold(SQLModel, table=True):
    """One seat of a cohort, from the hold to its release: the rows the counters count."""

    __tablename__ = "seat_hold"
    __table_args__ = (sa.Index("ix_seat_hold_cohort_state", "cohort_id", "state", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int = Field(foreign_key="cohort.id")
    # None until the Checkout Session exists (or for an offer nobody has claimed yet).
    checkout_session_id: str | None = Field(default=None, max_length=255, unique=True)
    waitlist_entry_id: int | None = Field(default=None, foreign_key="waitlist_entry.id")
    state: str = Field(default=SeatState.HELD, max_length=16)
    expires_at: datetime = _ts()
    release_reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class WaitlistState(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"  # a seat is held for them until offer_expires_at
    CLAIMED = "claimed"  # paid for the offered seat
    PASSED = "passed"  # the offer ran out: the seat went to the next person


class WaitlistEntry(SQLModel, table=True):
    __tablename__ = "waitlist_entry"
    __table_args__ = (
        sa.UniqueConstraint("cohort_id", "email", name="uq_waitlist_entry_cohort_email"),
        sa.UniqueConstraint("cohort_id", "position", name="uq_waitlist_entry_cohort_position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int = Field(foreign_key="cohort.id", index=True)
    email: str = Field(max_length=320)
    name: str = Field(max_length=100)
    position: int
    state: str = Field(default=WaitlistState.WAITING, max_length=16)
    offer_token_hash: str | None = Field(default=None, max_length=64, unique=True)
    offer_expires_at: datetime | None = _ts(nullable=True)
    offered_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
