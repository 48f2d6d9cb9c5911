"""enrollment.progress_version: bumped by every activity that moves a step, so the API
can push progress to the success page (PostgreSQL also NOTIFYs in the same transaction;
on SQLite the API polls this column for the enrollments being watched).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("progress_version", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("enrollment", schema=None) as batch_op:
        batch_op.drop_column("progress_version")
