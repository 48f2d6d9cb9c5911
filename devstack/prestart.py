"""Before the API or worker starts: wait for the database, create it if it is a missing
PostgreSQL database, and apply the migrations."""

import logging
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from core.settings import get_settings
from devstack import use_development_mode

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("onramp.prestart")


def ensure_database(url: str, timeout_s: float = 60.0) -> None:
    target = make_url(url)
    if target.get_backend_name() != "postgresql":
        return
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with admin.connect() as conn:
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                    {"name": target.database},
                ).first()
                if not exists:
                    log.info("creating database %s", target.database)
                    conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
            break
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for PostgreSQL at %s:%s", target.host, target.port)
            time.sleep(1)
    admin.dispose()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[prestart] %(message)s")
    use_development_mode()
    url = get_settings().database_url
    ensure_database(url)
    config = Config(str(ROOT / "alembic.ini"))
    command.upgrade(config, "head")
    log.info("database is at the latest migration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
