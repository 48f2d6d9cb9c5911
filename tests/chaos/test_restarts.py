"""Restarting the servers under a run: Temporal (its SQLite file kept) and the app's
PostgreSQL (a private cluster). What was in flight finishes, what arrived during the outage
is redelivered and finishes, and nothing is half-written."""

import asyncio
import secrets
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus

from devstack.processes import PrivatePostgres
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.chaos import (
    WEBHOOK,
    Chaos,
    MakeChaos,
    assert_every_step_once,
    is_welcome,
    say,
)
from tests.utils.helpers import event, signed

pytestmark = pytest.mark.chaos

OUTAGE_S = 7.0


async def checkout_and_pay(chaos: Chaos, email: str) -> str:
    """The student's path (a real sale); this test's sandbox then delivers Stripe's
    webhooks (and retries them) by itself."""
    (session,) = await chaos.sell([email])
    return str(session["id"])


def assert_nothing_half_written(chaos: Chaos, count: int) -> None:
    """Every enrollment whole: one user, four ready tools, one project, one of each step."""
    assert chaos.scalar('SELECT count(*) FROM "user"') == count
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE status = 'READY'") == count
    assert (
        chaos.scalar(
            'SELECT count(*) FROM enrollment e JOIN "user" u ON u.id = e.user_id '
            "WHERE e.payment_verified AND u.payment_verified AND e.completed_at IS NOT NULL"
        )
        == count
    )
    assert_every_step_once(chaos, count)
    # Each stored Stripe event got its outcome written after being handled.
    assert chaos.scalar("SELECT count(*) FROM stripe_event WHERE outcome = 'received'") == 0


async def test_temporal_restart_mid_run_every_payment_completes(make_chaos: MakeChaos) -> None:
    sandbox = BackgroundServer()
    chaos = await make_chaos(stripe_api_base=sandbox.url, tool_dev_latency_ms=200)
    sandbox.app = create_sandbox(
        webhook_url=f"{chaos.api_url}{WEBHOOK}",
        webhook_secret=chaos.secret,
        public_url=sandbox.url,
        retry_delays=(0.5, 1, 2, 4, 8, 8, 8),
    )
    run = secrets.token_hex(3)
    with sandbox:
        await chaos.start_worker()
        before = [
            await checkout_and_pay(chaos, f"t-before-{run}-{i}@example.com") for i in range(6)
        ]
        await chaos.wait_started(before, within_s=30)
        await asyncio.to_thread(chaos.temporal.stop)
        down_at = time.monotonic()
        during = [
            await checkout_and_pay(chaos, f"t-during-{run}-{i}@example.com") for i in range(6)
        ]
        # Longer than the API's StartWorkflow timeout, so webhooks meet 503s.
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        await chaos.temporal.start_async()
        outage = time.monotonic() - down_at
        ids = before + during
        statuses = await chaos.wait_closed(ids, within_s=120)
        recovered = time.monotonic() - down_at - outage
        async with httpx.AsyncClient(base_url=sandbox.url, timeout=30) as http:
            events = (await http.get("/_sandbox/events")).json()["data"]
    assert chaos.worker is not None and chaos.worker.running(), "the worker died with Temporal"
    # This sandbox saw only these 12 payments: every event it sent is one of theirs.
    deliveries = [e["delivery"] for e in events]
    codes = Counter(str(a["status_code"] or a["error"]) for d in deliveries for a in d["attempts"])
    say(
        f"Temporal down {outage:.1f} s (restarted on its SQLite file) with 6 enrollments in "
        f"flight and 6 paid meanwhile; all 12 done {recovered:.1f} s after the restart; "
        f"webhook attempts by answer: {dict(codes)}; worker starts: {chaos.worker_starts}"
    )
    assert any(code.startswith("5") for code in codes), "no webhook met the outage"
    assert {d["status"] for d in deliveries} == {"delivered"}
    assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    assert {r["status"] for r in (await chaos.results(ids)).values()} == {"READY"}
    runs = await chaos.runs_of(ids)
    assert len(runs) == len(ids) and set(runs.values()) == {1}
    assert_nothing_half_written(chaos, len(ids))


async def test_postgres_restart_mid_run_nothing_half_written(
    make_chaos: MakeChaos, running_cluster: PrivatePostgres
) -> None:
    # The app's own database on the private cluster: this test crashes it.
    chaos = await make_chaos(cluster=running_cluster, tool_dev_latency_ms=300)
    await chaos.start_worker()
    run = secrets.token_hex(3)
    # All twenty sold while the database is up: the gate reads the rows our checkout wrote.
    sold = await chaos.sell(
        [f"pg-{part}-{run}-{i}@example.com" for part in "ab" for i in range(10)]
    )
    first, second = sold[:10], sold[10:]
    attempts: dict[str, list[int | str]] = {}

    async def deliver_all(sessions: list[dict[str, Any]], http: httpx.AsyncClient) -> None:
        for s in sessions:
            payload, headers = signed(event("checkout.session.completed", s), chaos.secret)
            attempts[s["id"]] = await chaos.deliver_like_stripe(http, payload, headers)

    async with chaos.http() as http:
        await deliver_all(first, http)
        await asyncio.sleep(1.0)  # the first ten are mid-way through their activities
        running_cluster.stop("immediate")  # like a crash: no checkpoint, clients cut off
        down_at = time.monotonic()
        late = asyncio.create_task(deliver_all(second, http))
        await asyncio.sleep(4.0)
        running_cluster.start()
        outage = time.monotonic() - down_at
        await late
    ids = [s["id"] for s in first + second]
    statuses = await chaos.wait_closed(ids, within_s=150)
    retried = chaos.scalar(
        "SELECT count(*) FROM audit_event WHERE action = 'tool_provisioned' "
        "AND (details->>'attempt')::int > 1"
    )
    codes = Counter(str(a) for tries in attempts.values() for a in tries)
    welcomes = chaos.mail.per_recipient(is_welcome)
    dup_mail = {to: len(m) - 1 for to, m in welcomes.items() if len(m) > 1}
    say(
        f"PostgreSQL crashed (immediate stop) for {outage:.1f} s under 10 running enrollments "
        f"while 10 more were paid; webhook answers {dict(codes)}; {retried} tool provisions "
        f"succeeded on a retry; welcome duplicates {dup_mail or 'none'}"
    )
    assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    assert {r["status"] for r in (await chaos.results(ids)).values()} == {"READY"}
    assert all(tries[-1] == 200 for tries in attempts.values())
    runs = await chaos.runs_of(ids)
    assert len(runs) == len(ids) and set(runs.values()) == {1}
    assert_nothing_half_written(chaos, len(ids))
    assert sorted(welcomes) == sorted(s["metadata"]["email"] for s in first + second)
