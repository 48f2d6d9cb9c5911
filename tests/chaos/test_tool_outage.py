"""A tool's server goes down: the real PostgreSQL schema adapter against a private cluster
that the test stops and starts. Short outages heal by themselves; long ones reach support,
and nothing is lost when support retries."""

import asyncio
import secrets
import time
from typing import Any

import psycopg
import pytest
from temporalio.client import WorkflowExecutionStatus

from core.contracts import Decision, workflow_id_for
from devstack.processes import PrivatePostgres
from tests.utils.chaos import Chaos, MakeChaos, is_support_alert, is_welcome, say
from tests.utils.helpers import event, signed
from workflows.enrollment import EnrollmentWorkflow

pytestmark = pytest.mark.chaos


async def sell(chaos: Chaos, count: int, prefix: str) -> list[dict[str, Any]]:
    """Real sales, made before a test stops the tool's server (the sales need none)."""
    run = secrets.token_hex(3)
    return await chaos.sell([f"{prefix}-{run}-{i}@example.com" for i in range(count)])


async def enrol(chaos: Chaos, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stripe's completion event for each sale, delivered once and acknowledged."""
    async with chaos.http() as http:
        for session in sessions:
            payload, headers = signed(event("checkout.session.completed", session), chaos.secret)
            assert await chaos.deliver(http, payload, headers) == 200
    return sessions


def student_roles(cluster: PrivatePostgres, database: str) -> list[str]:
    with psycopg.connect(cluster.url(database)) as conn:
        return sorted(
            r[0]
            for r in conn.execute(
                "SELECT r.rolname FROM pg_roles r JOIN pg_namespace n ON n.nspname = r.rolname "
                "WHERE r.rolname LIKE 'student\\_%'"
            )
        )


async def test_tool_server_down_for_a_retry_round_heals_without_a_person(
    make_chaos: MakeChaos, running_cluster: PrivatePostgres
) -> None:
    learning_db = running_cluster.create_database(f"learning_{secrets.token_hex(3)}")
    # A minute of retries per tool; the outage below lasts a few retry intervals.
    chaos = await make_chaos(
        learning_database_url=running_cluster.url(learning_db), tool_retry_minutes=1.0
    )
    await chaos.start_worker()
    sold = await sell(chaos, 3, "blip")
    running_cluster.stop("fast")
    began = time.monotonic()
    sessions = await enrol(chaos, sold)
    await asyncio.sleep(4.0)  # attempts at about 0, 1 and 3 s fail: connection refused
    running_cluster.start()
    outage = time.monotonic() - began
    ids = [str(s["id"]) for s in sessions]
    statuses = await chaos.wait_closed(ids, within_s=90)
    attempts = [
        r[0]
        for r in chaos.rows(
            "SELECT (details->>'attempt')::int FROM audit_event "
            "WHERE action = 'tool_provisioned' AND details->>'tool' = 'postgres'"
        )
    ]
    say(
        f"learning PostgreSQL stopped for {outage:.1f} s under 3 enrollments; the postgres "
        f"tool succeeded on attempts {sorted(attempts)}; support emails: "
        f"{len(chaos.mail.select(is_support_alert))}"
    )
    assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    assert {r["status"] for r in (await chaos.results(ids)).values()} == {"READY"}
    assert all(a > 1 for a in attempts) and len(attempts) == 3
    assert chaos.mail.select(is_support_alert) == []
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE needs_attention") == 0
    assert len(student_roles(running_cluster, learning_db)) == 3


async def test_tool_server_down_past_its_retry_budget_asks_support_and_loses_nothing(
    make_chaos: MakeChaos, running_cluster: PrivatePostgres
) -> None:
    learning_db = running_cluster.create_database(f"learning_{secrets.token_hex(3)}")
    # Six seconds of retries per tool: the outage outlasts them.
    chaos = await make_chaos(
        learning_database_url=running_cluster.url(learning_db), tool_retry_minutes=0.1
    )
    await chaos.start_worker()
    sold = await sell(chaos, 2, "down")
    running_cluster.stop("fast")
    sessions = await enrol(chaos, sold)
    ids = [str(s["id"]) for s in sessions]
    emails = sorted(s["metadata"]["email"] for s in sessions)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        flagged = chaos.scalar(
            "SELECT count(*) FROM enrollment WHERE status = 'NEEDS_ATTENTION' AND needs_attention"
        )
        welcomed = sorted(chaos.mail.per_recipient(is_welcome))
        if flagged == 2 and len(chaos.mail.select(is_support_alert)) == 2 and welcomed == emails:
            break
        await asyncio.sleep(0.5)
    alerts = chaos.mail.select(is_support_alert)
    say(
        f"learning PostgreSQL down past the 6 s retry budget: {flagged} enrollments "
        f"NEEDS_ATTENTION, {len(alerts)} support emails"
    )
    assert flagged == 2 and len(alerts) == 2
    # The student still lands: other tools, first project and the welcome email went on.
    assert welcomed == emails
    for sid in ids:
        desc = await chaos.client.get_workflow_handle(workflow_id_for(sid)).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        assert desc.search_attributes.get("NeedsAttention") == [True]
        assert desc.search_attributes.get("FailedTool") == ["postgres"]
    assert chaos.scalar("SELECT count(*) FROM tool_account WHERE status = 'failed'") == 2
    assert chaos.scalar("SELECT count(*) FROM tool_account WHERE status = 'ready'") == 6

    # The server is back; support retries: both complete, nothing was lost meanwhile.
    running_cluster.start()
    for sid in ids:
        await chaos.client.get_workflow_handle(workflow_id_for(sid)).execute_update(
            EnrollmentWorkflow.decide,
            Decision(
                action="retry", actor="support:chaos", reason="database is back", tool="postgres"
            ),
        )
    statuses = await chaos.wait_closed(ids, within_s=60)
    assert set(statuses.values()) == {WorkflowExecutionStatus.COMPLETED}
    assert {r["status"] for r in (await chaos.results(ids)).values()} == {"READY"}
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE status = 'READY'") == 2
    assert chaos.scalar("SELECT count(*) FROM tool_account WHERE status = 'ready'") == 8
    assert len(student_roles(running_cluster, learning_db)) == 2
    assert len(chaos.mail.select(is_support_alert)) == 2  # no second alert
    say("after support's retry both enrollments are READY with their schema")
