"""Alembic environment: migrates the database named by DATABASE_URL (or -x url=...)."""

from alembic import context
from sqlmodel import SQLModel

import core.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from core.db import make_engine
from core.settings import get_settings

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or get_settings().database_url
    connectable = context.config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
