"""Staff's cohort use cases (`onramp-support cohort ...` and /api/staff/cohorts): list
with the ledger checked against its rows, create, edit, and settle the seats now."""

from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from core.cohorts import repository as ledger
from core.cohorts import service as cohorts
from core.db import session_scope
from core.errors import AppError
from core.models import Cohort
from core.settings import Settings


def parse_when(value: str | None, field: str) -> datetime | None:
    """A date (midnight UTC) or an ISO timestamp (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        when = datetime.fromisoformat(value)
    except ValueError:
        raise AppError(
            f"{field} must be a date (YYYY-MM-DD) or an ISO timestamp", error="Invalid date"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cohort_dict(db: Session, cohort: Cohort) -> dict[str, Any]:
    assert cohort.id is not None
    v = cohorts.view(db, cohort)
    rows = ledger.ledger_counts(db, cohort.id)
    return {
        **{k: (x.isoformat() if isinstance(x, datetime) else x) for k, x in asdict(v).items()},
        "stored_state": cohort.state,
        # What the seat rows say: equal to held/taken unless the ledger is broken.
        "ledger_consistent": (rows["held"], rows["taken"]) == (cohort.held, cohort.taken),
    }


def list_cohorts(engine: sa.Engine, track: str | None = None) -> list[dict[str, Any]]:
    with Session(engine) as db:
        return [cohort_dict(db, c) for c in ledger.list_cohorts(db, track)]


def create_cohort(engine: sa.Engine, change: cohorts.CohortChange, actor: str) -> dict[str, Any]:
    with session_scope(engine) as db:
        return cohort_dict(db, cohorts.create_cohort(db, change, actor))


def edit_cohort(
    engine: sa.Engine, code: str, change: cohorts.CohortChange, actor: str
) -> dict[str, Any]:
    with session_scope(engine) as db:
        return cohort_dict(db, cohorts.edit_cohort(db, code, change, actor))


def settle_now(engine: sa.Engine, settings: Settings) -> dict[str, Any]:
    """The sweep the reconcile Schedule runs, now."""
    result = cohorts.sweep(engine, settings)
    return {
        "expired": result.expired,
        "released": result.released,
        "offers": result.offers,
        "passed": result.passed,
    }
