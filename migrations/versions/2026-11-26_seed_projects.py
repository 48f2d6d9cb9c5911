"""seed the projects of each track

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROJECTS = [
    (
        "DP",
        1,
        "dp-1-sql-foundations",
        "SQL foundations: model and query your first dataset",
        "Load the sample sales CSV into your own Postgres schema, write five queries that "
        "answer the questions in the brief, and save them in a notebook in Jupyter.",
    ),
    (
        "DP",
        2,
        "dp-2-first-pipeline",
        "Your first pipeline with Prefect",
        "Turn last project's load into a Prefect flow that runs on your own work pool.",
    ),
    (
        "DP",
        3,
        "dp-3-dashboard",
        "A dashboard in Superset",
        "Chart the cleaned data from your schema and share the dashboard.",
    ),
    (
        "FSD",
        1,
        "fsd-1-first-web-app",
        "Your first web app",
        "In your code-server workspace, build a one-page app with a form that saves to a "
        "JSON file, then write two tests for it.",
    ),
    (
        "FSD",
        2,
        "fsd-2-rest-api",
        "A REST API with a database",
        "Expose last project's data through a small REST API backed by SQLite.",
    ),
    ("FSD", 3, "fsd-3-ship-it", "Ship it", "Containerise the app, add CI, and deploy it."),
]

project = sa.table(
    "project",
    sa.column("track", sa.String),
    sa.column("position", sa.Integer),
    sa.column("slug", sa.String),
    sa.column("title", sa.String),
    sa.column("guide", sa.String),
)


def upgrade() -> None:
    op.bulk_insert(
        project,
        [
            dict(zip(("track", "position", "slug", "title", "guide"), p, strict=True))
            for p in PROJECTS
        ],
    )


def downgrade() -> None:
    op.execute(project.delete().where(project.c.slug.in_([p[2] for p in PROJECTS])))
