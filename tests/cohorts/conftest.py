"""Cohorts on the shared stack: a small cohort of their own per test, and the sandbox's
API and control endpoints at hand."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from core.cohorts import repository as ledger
from core.cohorts import service as cohorts
from core.db import session_scope
from core.models import Cohort, CohortState, Enrollment, SeatHold, utcnow
from tests.utils.stack import Stack

CHECKOUT = "/api/payments/create-anonymous-checkout/"
WAITLIST = "/api/payments/waitlist/"


def make_cohort(engine: sa.Engine, code: str, size: int, track: str = "DP", **kw: Any) -> Cohort:
    """A cohort starting before the seed one, so it is the track's next cohort on sale."""
    with session_scope(engine) as db:
        return cohorts.create_cohort(
            db,
            cohorts.CohortChange(
                code=code,
                track=track,
                size=size,
                starts_at=kw.pop("starts_at", utcnow() + timedelta(days=10)),
                sales_open_at=utcnow() - timedelta(hours=1),
                state=kw.pop("state", CohortState.ON_SALE),
                **kw,
            ),
            actor="test",
        )


def cohort_row(engine: sa.Engine, code: str) -> Cohort:
    with Session(engine) as db:
        found = ledger.get_cohort_by_code(db, code)
        assert found is not None
        return found


def ledger_consistent(engine: sa.Engine, code: str) -> Cohort:
    """The counters equal the rows they count, within the size (read in one snapshot: the
    two move together in every transaction, so any committed state must agree)."""
    with Session(engine.execution_options(isolation_level="REPEATABLE READ")) as db:
        c = ledger.get_cohort_by_code(db, code)
        assert c is not None and c.id is not None
        rows = ledger.ledger_counts(db, c.id)
    assert (c.held, c.taken) == (rows["held"], rows["taken"]), (c, rows)
    assert c.held + c.taken <= c.size
    return c


def expire_holds_now(engine: sa.Engine, session_ids: list[str]) -> None:
    """Our own timer runs out on these holds (the Sessions at Stripe stay open)."""
    with session_scope(engine) as db:
        db.execute(
            sa.update(SeatHold)
            .where(col(SeatHold.checkout_session_id).in_(session_ids))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def holds_of(engine: sa.Engine, code: str) -> list[SeatHold]:
    with Session(engine) as db:
        c = ledger.get_cohort_by_code(db, code)
        assert c is not None
        return list(db.exec(select(SeatHold).where(col(SeatHold.cohort_id) == c.id)).all())


OFFER_LINK = re.compile(r"offer=([A-Za-z0-9_-]+)")


def offer_token(stack: Stack, email: str, timeout: float = 10) -> str:
    msg = stack.mail.wait_for(
        lambda m: email in m["To"] and "yours to take" in str(m["Subject"]), timeout=timeout
    )
    found = OFFER_LINK.search(msg.text or "")
    assert found, msg.text
    return found.group(1)


@pytest_asyncio.fixture(autouse=True)
async def runs_finished(fresh: Stack) -> AsyncIterator[None]:
    """After each test, its enrollments' runs finish before the next test empties the
    tables: a run still provisioning would hold tools another test counts."""
    yield
    stack = fresh
    with Session(stack.engine) as db:
        workflow_ids = list(db.exec(select(Enrollment.workflow_id)).all())
    for workflow_id in workflow_ids:
        handle = stack.client.get_workflow_handle(workflow_id)
        try:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                continue
        except RPCError:
            continue  # never started (not paid, or refunded before)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handle.result(), 120)


@pytest.fixture
def sandbox_http(fresh: Stack) -> Iterator[httpx.AsyncClient]:
    yield httpx.AsyncClient(
        base_url=fresh.sandbox_url,
        timeout=60,
        headers={"Authorization": f"Bearer {fresh.settings.stripe_api_key}"},
    )


async def eventually(predicate: Any, limit_s: float = 30.0) -> Any:
    """`predicate()` once it is truthy, polling without blocking the loop (the in-process
    worker runs on it)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit_s}s")
        await asyncio.sleep(0.1)


def set_state(engine: sa.Engine, code: str, state: str) -> None:
    with session_scope(engine) as db:
        cohorts.edit_cohort(db, code, cohorts.CohortChange(state=state), actor="test")


def buyer(email: str, track: str = "DP", **extra: Any) -> dict[str, Any]:
    return {"email": email, "name": "Grace Hopper", "track": track, **extra}
