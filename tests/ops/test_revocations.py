"""Refunds and disputes arrive as Stripe webhooks from the sandbox and go to the enrollment's
owner, its own EnrollmentWorkflow (signal-with-start): a full refund or a dispute withdraws
access, a dispute won gives it back, a partial refund is only recorded, and a duplicate
purchase is refunded automatically."""

import asyncio

from sqlmodel import Session, select
from temporalio.client import WorkflowExecutionStatus

from core.contracts import workflow_id_for
from core.models import AuditEvent, ToolAccountRecord
from tests.utils.ops import Ops, Paid


async def ready(ops: Ops, email: str, track: str = "DP") -> tuple[Paid, int]:
    paid = await ops.buy(email, track)
    enrollment = await ops.wait_status(paid.session_id, "READY")
    assert enrollment.user_id is not None
    return paid, enrollment.user_id


def tools(ops: Ops, user_id: int) -> dict[str, str]:
    with Session(ops.engine) as s:
        rows = s.exec(select(ToolAccountRecord).where(ToolAccountRecord.user_id == user_id))
        return {r.tool: r.status for r in rows}


async def changed(ops: Ops, session_id: str, action: str, n: int = 1) -> AuditEvent:
    """The n-th `enrollment_revoked` / `enrollment_reinstated`: the owner handled the event."""
    found = await ops.wait_for(
        lambda: (lambda rows: rows if len(rows) >= n else None)(ops.audit(session_id, action)),
        what=action,
    )
    return found[n - 1]  # type: ignore[no-any-return]


async def workflow_status(ops: Ops, workflow_id: str) -> WorkflowExecutionStatus | None:
    return (await ops.client.get_workflow_handle(workflow_id).describe()).status


async def test_full_refund_revokes_access(ops: Ops) -> None:
    paid, user_id = await ready(ops, "ada@example.com")
    # Refunded from the Stripe dashboard, not through Onramp.
    ops.gateway.refund_payment(paid.payment_intent, idempotency_key="dashboard-refund-1")

    await ops.wait_status(paid.session_id, "REVOKED")
    revoked = await changed(ops, paid.session_id, "enrollment_revoked")
    assert sorted(revoked.details["tools"]) == ["jupyter", "postgres", "prefect", "superset"]
    assert set(tools(ops, user_id).values()) == {"disabled"}
    assert {t for t, _ in ops.switch.deprovisioned} == {
        "jupyter",
        "postgres",
        "prefect",
        "superset",
    }
    user = ops.user("ada@example.com")
    assert user.is_active is False and user.enrollment_status == "REVOKED"
    [revoked] = ops.audit(paid.session_id, "enrollment_revoked")
    assert revoked.actor == "stripe" and revoked.details["cause"] == "refund"
    assert revoked.details["stripe_object_id"] == paid.charge

    # The student's login is refused from now on.
    async with ops.http() as http:
        r = await http.post(
            "/api/auth/login", json={"email": "ada@example.com", "password": "whatever-1234"}
        )
        assert r.status_code in (400, 401, 403)

    # show tells the story: one workflow, the enrollment's own, which received the refund.
    view = await ops.cli_json("show", paid.session_id)
    related = {w["workflow_id"]: w["type"] for w in view["related_workflows"]}
    assert related[workflow_id_for(paid.session_id)] == "EnrollmentWorkflow"
    assert set(related.values()) == {"EnrollmentWorkflow"}  # no revoke workflow beside it
    assert view["workflow"]["status"] == "RUNNING"
    assert "access_suspended" in [t["action"] for t in view["timeline"]]


async def test_partial_refund_is_recorded_and_access_kept(ops: Ops) -> None:
    paid, user_id = await ready(ops, "ada@example.com")
    async with ops.sandbox() as sb:
        r = await sb.post(
            "/v1/refunds",
            data={"payment_intent": paid.payment_intent, "amount": "5000"},
            headers={"Idempotency-Key": "partial-1"},
        )
        assert r.status_code == 200, r.text

    [partial] = await ops.wait_for(
        lambda: ops.audit(paid.session_id, "partial_refund"), what="partial refund audit"
    )
    assert partial.details["amount_refunded"] == 5000 and partial.details["charge"] == paid.charge
    assert ops.enrollment(paid.session_id).status == "READY"  # type: ignore[union-attr]
    assert set(tools(ops, user_id).values()) == {"ready"}
    assert ops.user("ada@example.com").is_active is True

    view = await ops.cli_json("show", paid.session_id)
    assert [r["details"]["amount_refunded"] for r in view["refunds"]] == [5000]
    code, text, _ = await ops.cli("show", paid.session_id)
    assert code == 0 and "REFUNDS" in text and "partial_refund" in text


async def test_dispute_revokes_and_a_won_dispute_reinstates(ops: Ops) -> None:
    paid, user_id = await ready(ops, "ada@example.com")
    async with ops.sandbox() as sb:
        r = await sb.post(f"/_sandbox/charges/{paid.charge}/dispute", json={"reason": "fraudulent"})
        assert r.status_code == 200, r.text
        dispute_id = r.json()["id"]

    await ops.wait_status(paid.session_id, "REVOKED")
    await changed(ops, paid.session_id, "enrollment_revoked")
    assert set(tools(ops, user_id).values()) == {"disabled"}
    assert ops.user("ada@example.com").is_active is False

    async with ops.sandbox() as sb:
        r = await sb.post(f"/_sandbox/disputes/{dispute_id}/close", json={"status": "won"})
        assert r.status_code == 200, r.text

    await ops.wait_status(paid.session_id, "READY")
    await changed(ops, paid.session_id, "enrollment_reinstated")
    assert set(tools(ops, user_id).values()) == {"ready"}
    assert ops.user("ada@example.com").is_active is True
    [reinstated] = ops.audit(paid.session_id, "enrollment_reinstated")
    assert reinstated.actor == "stripe" and reinstated.details["stripe_object_id"] == dispute_id


async def test_lost_dispute_keeps_access_withdrawn(ops: Ops) -> None:
    paid, _ = await ready(ops, "ada@example.com")
    async with ops.sandbox() as sb:
        dispute_id = (await sb.post(f"/_sandbox/charges/{paid.charge}/dispute", json={})).json()[
            "id"
        ]
        await ops.wait_status(paid.session_id, "REVOKED")
        await changed(ops, paid.session_id, "enrollment_revoked")
        await sb.post(f"/_sandbox/disputes/{dispute_id}/close", json={"status": "lost"})
    [closed] = await ops.wait_for(
        lambda: ops.audit(paid.session_id, "dispute_closed"), what="dispute closed audit"
    )
    assert closed.details["status"] == "lost"
    assert ops.enrollment(paid.session_id).status == "REVOKED"  # type: ignore[union-attr]
    assert ops.user("ada@example.com").is_active is False


async def test_refund_keeps_the_account_of_a_student_with_another_enrollment(ops: Ops) -> None:
    dp, _ = await ready(ops, "ada@example.com", "DP")
    fsd, user_id = await ready(ops, "ada@example.com", "FSD")
    ops.gateway.refund_payment(dp.payment_intent, idempotency_key="dashboard-refund-2")
    await ops.wait_status(dp.session_id, "REVOKED")
    await changed(ops, dp.session_id, "enrollment_revoked")
    assert ops.user("ada@example.com").is_active is True  # FSD is still paid for
    assert tools(ops, user_id) == {
        "postgres": "disabled",
        "superset": "disabled",
        "prefect": "disabled",
        "jupyter": "disabled",
        "codeserver": "ready",
    }
    assert ops.enrollment(fsd.session_id).status == "READY"  # type: ignore[union-attr]


async def test_duplicate_purchase_is_refunded_automatically(ops: Ops) -> None:
    first, user_id = await ready(ops, "ada@example.com")
    second = await ops.buy("ada@example.com")  # the same track again

    duplicate = await ops.wait_status(second.session_id, "CANCELLED")
    assert duplicate.attention_reason == "duplicate purchase: refunded automatically"
    [refunded] = await ops.wait_for(
        lambda: ops.audit(second.session_id, "duplicate_refunded"), what="refund audit"
    )
    charge = await ops.charge(second.charge)
    assert charge["refunded"] is True and refunded.details["refund_id"].startswith("re_")
    # The first enrollment and the account are untouched; support was still told.
    assert ops.enrollment(first.session_id).status == "READY"  # type: ignore[union-attr]
    assert ops.user("ada@example.com").is_active is True
    assert set(tools(ops, user_id).values()) == {"ready"}
    ops.mail.wait_for(lambda m: "duplicate purchase" in (m.text or ""), timeout=10)
    # The refund's own webhook is only recorded.
    await ops.wait_for(lambda: ops.audit(second.session_id, "refund_recorded"), what="recorded")
    # ... and the duplicate's run ends its fulfilment on its own, staying its owner.
    wid = f"enrollment-{second.session_id}"
    for _ in range(100):
        state = await ops.client.get_workflow_handle(wid).query("state")
        if state and state.get("finished"):
            break
        await asyncio.sleep(0.1)
    assert state["finished"] and state["status"] == "DUPLICATE"
    assert await workflow_status(ops, wid) == WorkflowExecutionStatus.RUNNING


async def test_a_revocation_that_died_is_run_again_by_the_next_event(ops: Ops) -> None:
    """REVOKED is set before the tools go: an owner terminated while a tool's server was
    unreachable must not make the redelivered refund answer "already revoked". The
    redelivery starts a new run (signal-with-start) that finishes the revocation from the
    ledger, and provisions nothing."""
    paid, user_id = await ready(ops, "ada@example.com")
    provisioned = len(ops.audit(paid.session_id, "tool_provisioned"))
    ops.switch.unreachable.add("superset")
    ops.gateway.refund_payment(
        paid.payment_intent, idempotency_key=f"dashboard-{paid.payment_intent}"
    )
    wid = workflow_id_for(paid.session_id)
    await ops.wait_status(paid.session_id, "REVOKED")
    await ops.wait_for(
        lambda: tools(ops, user_id).get("prefect") == "disabled", what="the other tools gone"
    )
    await ops.client.get_workflow_handle(wid).terminate("the worker's host was lost")
    assert tools(ops, user_id)["superset"] == "ready"
    assert not ops.audit(paid.session_id, "enrollment_revoked")

    ops.switch.unreachable.clear()
    async with ops.sandbox() as sb:
        events = (await sb.get("/_sandbox/events", params={"type": "charge.refunded"})).json()
        [event] = [e for e in events["data"] if e["event"]["data"]["object"]["id"] == paid.charge]
        r = await sb.post(f"/_sandbox/events/{event['id']}/resend")
        assert r.status_code == 200, r.text
    await changed(ops, paid.session_id, "enrollment_revoked")
    assert set(tools(ops, user_id).values()) == {"disabled"}
    assert ("superset", ops.user("ada@example.com").username) in ops.switch.deprovisioned
    assert len(ops.audit(paid.session_id, "tool_provisioned")) == provisioned
    runs = [w async for w in ops.client.list_workflows(f"WorkflowId = '{wid}'")]
    assert len(runs) == 2
