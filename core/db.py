"""Database engine and sessions. One engine per process, built from settings at startup."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy as sa
from sqlmodel import Session, create_engine

from core.settings import get_settings


def make_engine(url: str, *, pre_ping: bool = True) -> sa.Engine:
    """`pre_ping` tests each pooled connection before use (a round trip). The worker turns
    it off: its activities are retried, so a connection a PostgreSQL restart left dead costs
    one attempt (and SQLAlchemy then drops the rest of the pool), not a ping on every
    checkout (bench/README.md)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the worker writes; FKs are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=pre_ping, pool_size=10, max_overflow=20)


@lru_cache
def get_engine() -> sa.Engine:
    return make_engine(get_settings().database_url)


@contextmanager
def session_scope(engine: sa.Engine | None = None) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on any error."""
    with Session(engine or get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
