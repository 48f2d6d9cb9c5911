"""cohorts, their seat ledger (seat_hold) and waitlists; one open cohort per track.

The seed cohorts keep `make dev` and every existing flow working unchanged: each track
has a cohort on sale from now on, with no closing date and room for every test and bench.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:16:18
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEED_SEATS = 10_000
SEED_COHORTS = [
    ("DP-2027-01", "DP", datetime(2027, 1, 11, 9, tzinfo=UTC)),
    ("FSD-2027-01", "FSD", datetime(2027, 1, 18, 9, tzinfo=UTC)),
]


def upgrade() -> None:
    op.create_table(
        "cohort",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("track", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), server_default="0", nullable=False),
        sa.Column("taken", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sales_open_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sales_close_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("held + taken <= size", name=op.f("ck_cohort_seats_within_size")),
        sa.CheckConstraint("held >= 0 AND taken >= 0", name=op.f("ck_cohort_seats_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cohort")),
        sa.UniqueConstraint("code", name=op.f("uq_cohort_code")),
    )
    op.create_index(op.f("ix_cohort_track"), "cohort", ["track"], unique=False)
    op.create_table(
        "waitlist_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cohort_id", sa.Integer(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("offer_token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("offer_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cohort_id"], ["cohort.id"], name=op.f("fk_waitlist_entry_cohort_id_cohort")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entry")),
        sa.UniqueConstraint("cohort_id", "email", name="uq_waitlist_entry_cohort_email"),
        sa.UniqueConstraint("cohort_id", "position", name="uq_waitlist_entry_cohort_position"),
        sa.UniqueConstraint("offer_token_hash", name=op.f("uq_waitlist_entry_offer_token_hash")),
    )
    op.create_index(
        op.f("ix_waitlist_entry_cohort_id"), "waitlist_entry", ["cohort_id"], unique=False
    )
    op.create_table(
        "seat_hold",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cohort_id", sa.Integer(), nullable=False),
        sa.Column(
            "checkout_session_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
        ),
        sa.Column("waitlist_entry_id", sa.Integer(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("release_reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cohort_id"], ["cohort.id"], name=op.f("fk_seat_hold_cohort_id_cohort")
        ),
        sa.ForeignKeyConstraint(
            ["waitlist_entry_id"],
            ["waitlist_entry.id"],
            name=op.f("fk_seat_hold_waitlist_entry_id_waitlist_entry"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seat_hold")),
        sa.UniqueConstraint("checkout_session_id", name=op.f("uq_seat_hold_checkout_session_id")),
    )
    op.create_index(
        "ix_seat_hold_cohort_state", "seat_hold", ["cohort_id", "state", "expires_at"], unique=False
    )
    _seed()


def _seed() -> None:
    cohort = sa.table(
        "cohort",
        sa.column("code", sa.String),
        sa.column("track", sa.String),
        sa.column("starts_at", sa.DateTime(timezone=True)),
        sa.column("size", sa.Integer),
        sa.column("sales_open_at", sa.DateTime(timezone=True)),
        sa.column("state", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    if op.get_context().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # as core.models.UTCDateTime stores it
    op.bulk_insert(
        cohort,
        [
            {
                "code": code,
                "track": track,
                "starts_at": starts
                if op.get_context().dialect.name != "sqlite"
                else starts.replace(tzinfo=None),
                "size": SEED_SEATS,
                "sales_open_at": now - timedelta(days=1),
                "state": "on_sale",
                "created_at": now,
                "updated_at": now,
            }
            for code, track, starts in SEED_COHORTS
        ],
    )


def downgrade() -> None:
    op.drop_index("ix_seat_hold_cohort_state", table_name="seat_hold")
    op.drop_table("seat_hold")
    op.drop_index(op.f("ix_waitlist_entry_cohort_id"), table_name="waitlist_entry")
    op.drop_table("waitlist_entry")
    op.drop_index(op.f("ix_cohort_track"), table_name="cohort")
    op.drop_table("cohort")
