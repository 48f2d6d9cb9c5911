"""Only what Stripe's own copy says was paid, for our checkout, at our price, is fulfilled:
through the webhook, verify-session, reconciliation and support replay alike. A refusal is a
row support sees (list, staff API), an audit event and one alert; nothing is provisioned."""

import asyncio
from typing import Any

import httpx
import stripe
from sqlmodel import Session, select
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import EnrollmentStatus, workflow_id_for
from core.models import Enrollment, User
from core.urls import WEBHOOK_PATH
from tests.utils.helpers import event, signed
from tests.utils.ops import SANDBOX_KEY, Ops


def foreign_session(ops: Ops, email: str, amount: int = 100, track: str = "DP") -> str:
    """A Session created on the Stripe account directly (not by our checkout endpoint),
    carrying our metadata, at another price."""
    client = stripe.StripeClient(SANDBOX_KEY, base_addresses={"api": ops.sandbox_url})
    metadata = {"email": email, "name": "Mallory", "track": track, "anonymous_checkout": "true"}
    session = client.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer_email": email,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": amount,
                        "product_data": {"name": "Onramp Data Professional track"},
                    },
                }
            ],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": f"{ops.api_url}/payment/success?session_id={{CHECKOUT_SESSION_ID}}",
        }
    )
    return session.id


async def pay_quietly(ops: Ops, session_id: str) -> dict[str, Any]:
    async with ops.webhooks_lost(), ops.sandbox() as sb:
        r = await sb.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json={})
        assert r.status_code == 200, r.text
        return r.json()["checkout_session"]  # type: ignore[no-any-return]


async def deliver(ops: Ops, type_: str, obj: dict[str, Any]) -> httpx.Response:
    payload, headers = signed(event(type_, obj), ops.settings.stripe_webhook_secret)
    async with ops.http() as http:
        return await http.post(WEBHOOK_PATH, content=payload, headers=headers)


async def runs_of(ops: Ops, session_id: str) -> list[Any]:
    wid = workflow_id_for(session_id)
    return [w async for w in ops.client.list_workflows(f"WorkflowId = '{wid}'")]


def users(ops: Ops) -> list[User]:
    with Session(ops.engine) as s:
        return list(s.exec(select(User).where(User.role == "student")).all())


async def test_a_one_dollar_session_with_our_metadata_is_refused_everywhere(ops: Ops) -> None:
    sid = foreign_session(ops, "mallory@example.com", amount=100)
    session = await pay_quietly(ops, sid)
    assert session["payment_status"] == "paid" and session["amount_total"] == 100

    r = await deliver(ops, "checkout.session.completed", session)
    assert r.status_code == 200 and r.json()["outcome"] == "refused"
    row = ops.enrollment(sid)
    assert row is not None and row.status == EnrollmentStatus.PAYMENT_MISMATCH
    assert row.needs_attention and "not created by our checkout" in (row.attention_reason or "")
    assert [a.details["source"] for a in ops.audit(sid, "fulfilment_refused")] == [
        "webhook:checkout.session.completed"
    ]
    alert = ops.mail.wait_for(lambda m: "Payment refused" in m["Subject"], timeout=10)
    assert alert["To"] == ops.settings.support_email and sid in (alert.text or "")

    # Every other path refuses it too, and nothing is ever started or provisioned.
    again = await deliver(ops, "checkout.session.completed", session)
    assert again.json()["outcome"] == "refused"
    pi = {
        "id": session["payment_intent"],
        "object": "payment_intent",
        "metadata": {"anonymous_checkout": "true"},
    }
    assert (await deliver(ops, "payment_intent.succeeded", pi)).json()["outcome"] == "refused"
    async with ops.http() as http:
        v = await http.get("/api/payments/verify-session/", params={"session_id": sid})
    assert v.status_code == 202 and v.json()["progress"]["needs_attention"] is True
    assert "access" not in v.json()
    # Reconcile sees every paid Session in the sandbox (earlier tests' too, their rows gone):
    # this one is among the refused, and nothing is started.
    reconciled = await ops.cli_json("reconcile")
    assert reconciled["refused"] >= 1 and reconciled["started"] == []
    code, _, err = await ops.cli("replay", sid, "--reason", "try it")
    assert code != 0 and "not what we sold" in err
    assert await runs_of(ops, sid) == [] and users(ops) == []
    # One alert, however many times it was refused.
    assert len(ops.audit(sid, "fulfilment_refused")) == 1
    assert (
        sum("Payment refused" in m["Subject"] and sid in (m.text or "") for m in ops.mail.messages)
        == 1
    )

    # Support finds it in the list and the staff API.
    # (reconcile above refused earlier tests' paid Sessions too: they are listed beside it)
    listed = await ops.cli_json("list", "--needs-attention")
    assert sid in [e["checkout_session_id"] for e in listed]
    token = await ops.staff_token()
    async with ops.http(token) as http:
        staff = await http.get("/api/staff/enrollments", params={"status": "PAYMENT_MISMATCH"})
    assert staff.status_code == 200
    assert sid in [e["checkout_session_id"] for e in staff.json()]
    assert all(e["status"] == "PAYMENT_MISMATCH" for e in staff.json())


async def test_a_signed_paid_body_is_not_believed_when_stripe_says_unpaid(ops: Ops) -> None:
    """A leaked webhook secret is not a free-enrollment key: Stripe's copy decides."""
    async with ops.http() as http:
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={"email": "leak@example.com", "name": "Lee", "track": "FSD"},
        )
        sid = r.json()["sessionId"]
    async with ops.sandbox() as sb:
        real = (await sb.get(f"/v1/checkout/sessions/{sid}")).json()
    assert real["payment_status"] == "unpaid"
    forged = {**real, "status": "complete", "payment_status": "paid", "amount_total": 59_900}
    for type_ in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        r = await deliver(ops, type_, forged)
        assert r.status_code == 200 and r.json()["outcome"] in {
            "awaiting_payment",
            "no_paid_session",
        }, (type_, r.text)
    async with ops.http() as http:
        v = await http.get("/api/payments/verify-session/", params={"session_id": sid})
    assert v.status_code == 202
    assert await runs_of(ops, sid) == [] and users(ops) == []


async def test_a_fulfilled_enrollment_whose_access_ended_never_comes_back(ops: Ops) -> None:
    """REVOKED in the ledger, its workflow history gone from Temporal: no path starts it."""
    paid = await ops.buy("gone@example.com", track="FSD")
    await ops.wait_status(paid.session_id, EnrollmentStatus.READY)
    wid = workflow_id_for(paid.session_id)
    await ops.fulfilled(paid.session_id)
    with Session(ops.engine) as s:
        row = s.exec(
            select(Enrollment).where(Enrollment.checkout_session_id == paid.session_id)
        ).one()
        row.status = EnrollmentStatus.REVOKED
        s.add(row)
        s.commit()
    await delete_history(ops, wid)

    async with ops.sandbox() as sb:
        session = (await sb.get(f"/v1/checkout/sessions/{paid.session_id}")).json()
    r = await deliver(ops, "checkout.session.completed", session)
    assert r.json()["outcome"] == "access_ended"
    async with ops.http() as http:
        v = await http.get("/api/payments/verify-session/", params={"session_id": paid.session_id})
    assert v.status_code == 202 and "access" not in v.json()
    code, _, err = await ops.cli("replay", paid.session_id, "--reason", "again")
    assert code != 0 and "ended" in err
    assert await no_run(ops, paid.session_id)
    after = ops.enrollment(paid.session_id)
    assert after is not None and after.status == EnrollmentStatus.REVOKED


async def test_a_landed_enrollment_whose_history_is_gone_answers_from_the_database(
    ops: Ops,
) -> None:
    paid = await ops.buy("kept@example.com", track="FSD")
    await ops.wait_status(paid.session_id, EnrollmentStatus.READY)
    wid = workflow_id_for(paid.session_id)
    await ops.fulfilled(paid.session_id)
    await delete_history(ops, wid)
    async with ops.sandbox() as sb:
        session = (await sb.get(f"/v1/checkout/sessions/{paid.session_id}")).json()
    r = await deliver(ops, "checkout.session.completed", session)
    assert r.json()["outcome"] == "already_fulfilled"
    async with ops.http() as http:
        v = await http.get("/api/payments/verify-session/", params={"session_id": paid.session_id})
    assert v.status_code == 200 and v.json()["enrollment_status"] == "READY"
    assert await no_run(ops, paid.session_id)


async def delete_history(ops: Ops, workflow_id: str) -> None:
    """What the namespace's retention does to a closed run after 30 days."""
    await ops.client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=ops.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
        )
    )
    handle = ops.client.get_workflow_handle(workflow_id)
    for _ in range(1200):  # the server deletes in the background; slow under load
        try:
            await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return
            raise
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} still there after deletion")


async def no_run(ops: Ops, session_id: str) -> bool:
    try:
        await ops.client.get_workflow_handle(workflow_id_for(session_id)).describe()
    except RPCError as err:
        return err.status == RPCStatusCode.NOT_FOUND
    return False
