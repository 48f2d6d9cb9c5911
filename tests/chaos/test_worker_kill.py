"""SIGKILL the worker at random points during 30 enrollments, and once at the worst moment
(the welcome email accepted by SMTP, the database not yet told): everything completes and
nothing is duplicated but, at most, that one email."""

import asyncio
import os
import random
import secrets
import time
from collections import Counter

import psycopg
import pytest
from temporalio.client import WorkflowExecutionStatus

from core.crypto import token_hash
from devstack.mailcatcher import CaughtMessage
from devstack.processes import PrivatePostgres
from tests.utils.chaos import (
    MakeChaos,
    assert_every_step_once,
    is_welcome,
    link_token,
    recipient,
    say,
)
from tests.utils.helpers import event, signed

pytestmark = pytest.mark.chaos

ENROLLMENTS = 30
RANDOM_KILLS = 4


async def test_worker_killed_at_random_points_loses_and_duplicates_nothing(
    make_chaos: MakeChaos, running_cluster: PrivatePostgres
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or time.time())
    rng = random.Random(seed)
    learning_db = running_cluster.create_database(f"learning_{secrets.token_hex(3)}")
    # The real PostgreSQL adapter on a throwaway database; the other tools are stand-ins
    # that take 300 ms, so kills land inside activities.
    chaos = await make_chaos(
        learning_database_url=running_cluster.url(learning_db), tool_dev_latency_ms=300
    )
    window: list[str] = []

    def kill_inside_smtp_window(message: CaughtMessage) -> None:
        if not window and is_welcome(message):
            window.append(recipient(message))
            chaos.kill_worker()  # before "250": the activity never learns the mail went out

    chaos.mail.on_message = kill_inside_smtp_window
    await chaos.start_worker()
    run = secrets.token_hex(3)
    sessions = await chaos.sell([f"kill-{run}-{i}@example.com" for i in range(ENROLLMENTS)])
    async with chaos.http() as http:
        for session in sessions:
            payload, headers = signed(event("checkout.session.completed", session), chaos.secret)
            assert await chaos.deliver(http, payload, headers) == 200

    kill_times: list[float] = []
    began = time.monotonic()
    for _ in range(RANDOM_KILLS):
        await_s = rng.uniform(0.3, 2.5)
        await asyncio.sleep(await_s)
        if chaos.worker is not None and chaos.worker.running():
            chaos.kill_worker()
            kill_times.append(round(time.monotonic() - began, 2))
        chaos.worker.popen.wait(10)  # type: ignore[union-attr]
        await chaos.start_worker()

    async def restart_if_dead() -> None:
        if chaos.worker is not None and not chaos.worker.running():
            await chaos.start_worker()

    ids = [s["id"] for s in sessions]
    statuses = await chaos.wait_closed(ids, within_s=200, on_tick=restart_if_dead)
    say(
        f"seed {seed}: {len(kill_times)} random SIGKILLs at {kill_times} s, one inside the "
        f"SMTP window of {window or 'no message'}; worker started {chaos.worker_starts} times"
    )
    assert Counter(statuses.values()) == {WorkflowExecutionStatus.COMPLETED: ENROLLMENTS}
    results = await chaos.results(ids)
    assert {r["status"] for r in results.values()} == {"READY"}
    runs = await chaos.runs_of(ids)
    assert set(runs.values()) == {1} and len(runs) == ENROLLMENTS

    # The database: one user, one enrollment, one of each step, per payment.
    emails = [s["metadata"]["email"] for s in sessions]
    assert chaos.scalar('SELECT count(*) FROM "user"') == ENROLLMENTS
    assert chaos.scalar('SELECT count(DISTINCT email) FROM "user"') == ENROLLMENTS
    assert chaos.scalar("SELECT count(*) FROM enrollment WHERE status = 'READY'") == ENROLLMENTS
    assert_every_step_once(chaos, ENROLLMENTS)
    reprovisioned = (
        chaos.scalar("SELECT count(*) FROM audit_event WHERE action = 'tool_provisioned'")
        - 4 * ENROLLMENTS
    )

    # The learning database: one role and one schema per student, made by the real adapter.
    usernames = [r[0] for r in chaos.rows('SELECT username FROM "user"')]
    with psycopg.connect(running_cluster.url(learning_db)) as conn:
        roles = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'student\\_%'"
        )]  # fmt: skip
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'student\\_%'"
        )]  # fmt: skip
    assert sorted(roles) == sorted(f"student_{u}" for u in usernames)
    assert sorted(schemas) == sorted(roles)

    # Mail: everyone is welcomed; a duplicate is possible only for a kill inside the window.
    welcomes = chaos.mail.per_recipient(is_welcome)
    assert sorted(welcomes) == sorted(emails)
    raw_duplicates = {to: len(msgs) - 1 for to, msgs in welcomes.items() if len(msgs) > 1}
    distinct_ids = {to: len({m["Message-ID"] for m in msgs}) for to, msgs in welcomes.items()}
    say(
        f"{reprovisioned} tool provisions re-run after kills; welcome emails: "
        f"{sum(len(m) for m in welcomes.values())} sent to {len(welcomes)} recipients, raw "
        f"duplicates {raw_duplicates or 'none'}, distinct Message-IDs for them "
        f"{ {to: distinct_ids[to] for to in raw_duplicates} }"
    )
    # The kill inside the window always costs one resend; a random kill at most one more.
    assert window and raw_duplicates.get(window[0], 0) >= 1
    assert sum(raw_duplicates.values()) <= 1 + len(kill_times)
    # A resend after a kill carries the same Message-ID, so receivers show it once.
    assert all(n == 1 for n in distinct_ids.values()), distinct_ids
    # ... and the same link, live: whichever copy a receiver keeps, its link works.
    for to, msgs in welcomes.items():
        tokens = {link_token(m) for m in msgs}
        assert len(tokens) == 1 and None not in tokens, (to, tokens)
        [token] = tokens
        assert token is not None
        live = chaos.scalar(
            "SELECT count(*) FROM set_password_token WHERE token_hash = :h"
            " AND used_at IS NULL AND expires_at > now()",
            h=token_hash(token),
        )
        assert live == 1, f"the link mailed to {to} does not work"
