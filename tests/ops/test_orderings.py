"""Stripe's events in the orders that break naive fulfilment, on the real stack: the API,
the worker, Temporal and the sandbox. Webhooks are held while the payment, refund or
dispute happens, then delivered (signed, by the sandbox) in the order under test; a seeded
shuffle adds redeliveries of events already sent. The seed is printed:
`ORDERING_SEED=<n> pytest tests/ops/test_orderings.py` replays one run.

Every ordering must end with the one right state: one run per payment (which stays open,
the enrollment's owner for its later events), access for a kept payment, none for a
refunded or lost one, whatever came first.
"""

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import workflow_id_for
from tests.ops.test_revocations import tools
from tests.utils.ops import Ops, Paid

SEED = int(os.environ.get("ORDERING_SEED") or time.time_ns() % 1_000_000)


@pytest.fixture
def rng() -> random.Random:
    print(f"ORDERING_SEED={SEED}")
    return random.Random(SEED)


@asynccontextmanager
async def held(ops: Ops) -> AsyncIterator[None]:
    """Stripe records its events but delivers none until the block ends."""
    async with ops.sandbox() as sb:
        assert (await sb.post("/_sandbox/webhook_url", json={"url": None})).status_code == 200
        before = {r["id"] for r in (await sb.get("/_sandbox/events")).json()["data"]}
    try:
        yield
    finally:
        async with ops.sandbox() as sb:
            # The sandbox sends from a task: wait until each new event found no endpoint,
            # or it would go out, in Stripe's order, once the URL is back.
            for _ in range(100):
                records = (await sb.get("/_sandbox/events")).json()["data"]
                pending = [
                    r for r in records
                    if r["id"] not in before and r["delivery"]["status"] != "no_endpoint"
                ]  # fmt: skip
                if not pending:
                    break
                await asyncio.sleep(0.05)
            assert not pending, pending
            await sb.post(
                "/_sandbox/webhook_url", json={"url": f"{ops.api_url}/api/payments/webhook/"}
            )


async def events_of(ops: Ops, *object_ids: str) -> dict[str, dict[str, Any]]:
    """The sandbox's events about these objects, by type (the newest of each type)."""
    async with ops.sandbox() as sb:
        records = (await sb.get("/_sandbox/events")).json()["data"]
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        obj = record["event"]["data"]["object"]
        if {obj.get("id"), _id(obj.get("payment_intent")), _id(obj.get("charge"))} & set(
            object_ids
        ):
            found[record["type"]] = record
    return found


def _id(value: Any) -> str | None:
    return value.get("id") if isinstance(value, dict) else value


async def deliver(
    ops: Ops, rng: random.Random, events: dict[str, dict[str, Any]], order: Sequence[str]
) -> list[str]:
    """Deliver `order` (event types), each followed at random by redeliveries of earlier
    ones; returns what was sent. Every delivery must be acknowledged (2xx)."""
    sent: list[str] = []
    async with ops.sandbox() as sb:
        for etype in order:
            for again in [etype, *rng.sample(sent, k=min(len(sent), rng.randint(0, 2)))]:
                r = await sb.post(f"/_sandbox/events/{events[again]['id']}/resend")
                assert r.status_code == 200, r.text
                attempt = r.json()["delivery"]["attempts"][-1]
                assert attempt["status_code"] == 200, (again, attempt)
                sent.append(again)
    print(f"delivered: {sent}")
    return sent


async def pay_held(ops: Ops, email: str, **body: Any) -> Paid:
    async with ops.http() as http:
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": email, "name": "Ada Lovelace", "track": "DP"},
        )
        assert r.status_code == 200, r.text
        session_id = r.json()["sessionId"]
    async with ops.sandbox() as sb:
        r = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json=body)
        assert r.status_code == 200, r.text
        paid = r.json()
    return Paid(session_id, paid["payment_intent"]["id"], paid["charge"]["id"], email)


async def runs(ops: Ops, session_id: str) -> list[WorkflowExecutionStatus | None]:
    wid = workflow_id_for(session_id)
    return [w.status async for w in ops.client.list_workflows(f"WorkflowId = '{wid}'")]


async def has_history(ops: Ops, session_id: str) -> bool:
    """Whether Temporal has a run of this enrollment (describe: no visibility lag)."""
    try:
        await ops.client.get_workflow_handle(workflow_id_for(session_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def settled(ops: Ops, session_id: str) -> None:
    """Nothing of this enrollment is still moving: its run is closed, or open as the owner
    with its fulfilment over and no activity pending."""
    await ops.fulfilled(session_id)


async def one_owner(ops: Ops, session_id: str) -> None:
    """One run of this payment, open: the enrollment's owner."""
    assert await runs(ops, session_id) == [WorkflowExecutionStatus.RUNNING]


async def test_async_payment_succeeded_before_the_unpaid_completed(
    ops: Ops, rng: random.Random
) -> None:
    async with held(ops):
        paid = await pay_held(ops, "ada@example.com", **{"async": True})
        async with ops.sandbox() as sb:
            r = await sb.post(
                f"/_sandbox/checkout/sessions/{paid.session_id}/async_result",
                json={"succeeded": True},
            )
            assert r.status_code == 200, r.text
    events = await events_of(ops, paid.session_id)
    await deliver(
        ops,
        rng,
        events,
        ["checkout.session.async_payment_succeeded", "checkout.session.completed"],
    )
    await ops.wait_status(paid.session_id, "READY")
    await settled(ops, paid.session_id)
    await one_owner(ops, paid.session_id)


async def test_payment_intent_succeeded_then_completed_is_one_run(
    ops: Ops, rng: random.Random
) -> None:
    async with held(ops):
        paid = await pay_held(ops, "ada@example.com")
    events = await events_of(ops, paid.session_id, paid.payment_intent)
    await deliver(ops, rng, events, ["payment_intent.succeeded", "checkout.session.completed"])
    await ops.wait_status(paid.session_id, "READY")
    await settled(ops, paid.session_id)
    await one_owner(ops, paid.session_id)
    assert len(ops.audit(paid.session_id, "payment_confirmed")) == 1


async def test_an_expired_session_ends_expired(ops: Ops, rng: random.Random) -> None:
    async with ops.http() as http:
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "ada@example.com", "name": "Ada Lovelace", "track": "DP"},
        )
        session_id = r.json()["sessionId"]
    async with held(ops):
        ops.gateway._client.v1.checkout.sessions.expire(session_id)  # type: ignore[attr-defined]
    events = await events_of(ops, session_id)
    await deliver(ops, rng, events, ["checkout.session.expired"])
    await ops.wait_status(session_id, "EXPIRED")
    assert await runs(ops, session_id) == []


async def test_a_refund_before_completed_arrives_gives_no_access(
    ops: Ops, rng: random.Random
) -> None:
    async with held(ops):
        paid = await pay_held(ops, "ada@example.com")
        ops.gateway.refund_payment(paid.payment_intent, idempotency_key=f"early-{paid.charge}")
    events = await events_of(ops, paid.session_id, paid.payment_intent, paid.charge)
    await deliver(
        ops,
        rng,
        events,
        ["charge.refunded", "checkout.session.completed", "payment_intent.succeeded"],
    )
    await ops.wait_status(paid.session_id, "REVOKED")
    # verify-session (the buyer's page polling) must not start it either.
    async with ops.http() as http:
        r = await http.get("/api/payments/verify-session/", params={"session_id": paid.session_id})
        assert r.status_code != 200 or not r.json().get("access"), r.text
    await asyncio.sleep(1)
    assert await runs(ops, paid.session_id) == []
    assert ops.enrollment(paid.session_id).status == "REVOKED"  # type: ignore[union-attr]
    assert ops.audit(paid.session_id, "fulfilment_withdrawn")


async def test_a_refund_while_tools_provision_ends_in_no_access(
    ops: Ops, rng: random.Random
) -> None:
    ops.switch.broken.add("prefect")  # the run waits on it, tools half made
    paid = await ops.buy("ada@example.com")
    enrollment = await ops.wait_status(paid.session_id, "NEEDS_ATTENTION")
    ops.gateway.refund_payment(paid.payment_intent, idempotency_key=f"mid-{paid.charge}")
    await ops.wait_status(paid.session_id, "REVOKED")
    await ops.wait_for(
        lambda: ops.audit(paid.session_id, "enrollment_revoked"), what="revocation done"
    )
    await settled(ops, paid.session_id)
    await one_owner(ops, paid.session_id)  # the run itself stopped and revoked: no other
    assert not ops.audit(paid.session_id, "enrollment_cancelled")
    assert enrollment.user_id is not None
    # Every tool of the track went, prefect (half made, failing) too.
    assert set(tools(ops, enrollment.user_id).values()) <= {"disabled", "failed"}
    username = ops.user("ada@example.com").username
    assert {t for t, u in ops.switch.deprovisioned if u == username} >= {
        "postgres", "superset", "prefect", "jupyter"
    }  # fmt: skip
    assert ops.user("ada@example.com").is_active is False
    # Redelivered, the refund changes nothing more.
    events = await events_of(ops, paid.charge)
    await deliver(ops, rng, events, ["charge.refunded"])
    assert len(ops.audit(paid.session_id, "enrollment_revoked")) == 1


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_a_dispute_opened_then_closed(ops: Ops, rng: random.Random, outcome: str) -> None:
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "READY")
    async with held(ops):
        async with ops.sandbox() as sb:
            dispute = (await sb.post(f"/_sandbox/charges/{paid.charge}/dispute", json={})).json()
            r = await sb.post(f"/_sandbox/disputes/{dispute['id']}/close", json={"status": outcome})
            assert r.status_code == 200, r.text
    events = await events_of(ops, paid.charge, dispute["id"])
    await deliver(ops, rng, events, ["charge.dispute.created", "charge.dispute.closed"])
    want = "READY" if outcome == "won" else "REVOKED"
    await ops.wait_status(paid.session_id, want, limit_s=60)
    await ops.wait_for(
        lambda: (
            len(ops.audit(paid.session_id, "enrollment_reinstated")) == 1
            if outcome == "won"
            else ops.audit(paid.session_id, "enrollment_revoked")
        ),
        what=f"dispute {outcome} settled",
    )
    assert ops.user("ada@example.com").is_active is (outcome == "won")


async def test_a_duplicate_purchase_then_a_refund_of_the_first(
    ops: Ops, rng: random.Random
) -> None:
    first = await ops.buy("ada@example.com")
    await ops.wait_status(first.session_id, "READY")
    second = await ops.buy("ada@example.com")
    await ops.wait_status(second.session_id, "CANCELLED")  # refunded automatically
    ops.gateway.refund_payment(first.payment_intent, idempotency_key=f"first-{first.charge}")
    await ops.wait_status(first.session_id, "REVOKED")
    await ops.wait_for(
        lambda: ops.audit(first.session_id, "enrollment_revoked"), what="revocation done"
    )
    assert ops.user("ada@example.com").is_active is False
    charges = [await ops.charge(p.charge) for p in (first, second)]
    assert all(c["refunded"] for c in charges)


async def test_a_cancel_while_a_tool_waits_for_a_decision(ops: Ops, rng: random.Random) -> None:
    ops.switch.broken.add("superset")
    paid = await ops.buy("ada@example.com")
    await ops.wait_status(paid.session_id, "NEEDS_ATTENTION")
    await ops.cli_json("cancel", paid.session_id, "--reason", "student asked")
    await ops.wait_status(paid.session_id, "CANCELLED")
    await settled(ops, paid.session_id)
    # The refund's own webhook, redelivered in any order, never revokes a cancelled one.
    events = await events_of(ops, paid.charge)
    await deliver(ops, rng, events, ["charge.refunded"])
    assert ops.enrollment(paid.session_id).status == "CANCELLED"  # type: ignore[union-attr]
    assert not ops.audit(paid.session_id, "enrollment_revoked")


async def test_every_event_redelivered_after_the_history_is_gone(
    ops: Ops, rng: random.Random
) -> None:
    """Temporal keeps closed runs for its retention only: then the database alone must
    keep a refunded student out and a paid one from being enrolled twice."""
    kept = await ops.buy("ada@example.com")
    refunded = await ops.buy("bob@example.com")
    for paid in (kept, refunded):
        await ops.wait_status(paid.session_id, "READY")
    ops.gateway.refund_payment(refunded.payment_intent, idempotency_key=f"gone-{refunded.charge}")
    await ops.wait_for(
        lambda: ops.audit(refunded.session_id, "enrollment_revoked"), what="revocation done"
    )
    for paid in (kept, refunded):
        await settled(ops, paid.session_id)
        # The owner is open: deleting it ends the run and its history at once.
        await ops.client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(
                namespace=ops.client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=workflow_id_for(paid.session_id)),
            )
        )
        for _ in range(600):
            if not await has_history(ops, paid.session_id):
                break
            await asyncio.sleep(0.1)
        desc = None
        if await has_history(ops, paid.session_id):
            desc = await ops.client.get_workflow_handle(workflow_id_for(paid.session_id)).describe()
        assert desc is None, (desc.status, desc.run_id, desc.close_time)

    for paid in (kept, refunded):
        events = await events_of(ops, paid.session_id, paid.payment_intent, paid.charge)
        order = list(events)
        rng.shuffle(order)
        await deliver(ops, rng, events, order)
    await asyncio.sleep(1)
    assert not await has_history(ops, kept.session_id)  # recorded: never run a second time
    assert not await has_history(ops, refunded.session_id)
    assert ops.enrollment(kept.session_id).status == "READY"  # type: ignore[union-attr]
    assert ops.enrollment(refunded.session_id).status == "REVOKED"  # type: ignore[union-attr]
    assert ops.user("bob@example.com").is_active is False
    assert len(ops.audit(refunded.session_id, "enrollment_revoked")) == 1

    # A new event for the kept one, whose history is gone: signal-with-start begins a run
    # from the ledger, which withdraws access and provisions nothing anew.
    provisioned = len(ops.audit(kept.session_id, "tool_provisioned"))
    ops.gateway.refund_payment(kept.payment_intent, idempotency_key=f"late-{kept.charge}")
    await ops.wait_for(
        lambda: ops.audit(kept.session_id, "enrollment_revoked"), what="the late revocation"
    )
    await settled(ops, kept.session_id)
    assert ops.enrollment(kept.session_id).status == "REVOKED"  # type: ignore[union-attr]
    assert ops.user("ada@example.com").is_active is False
    assert len(ops.audit(kept.session_id, "tool_provisioned")) == provisioned
    assert len(ops.audit(kept.session_id, "payment_confirmed")) == 1
    assert await has_history(ops, kept.session_id)  # the new owner
    events = await events_of(ops, kept.charge)
    await deliver(ops, rng, events, ["charge.refunded"])  # redelivered: handled once
    assert len(ops.audit(kept.session_id, "enrollment_revoked")) == 1
