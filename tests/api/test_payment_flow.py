"""The payment-first flow over real HTTP: checkout -> sandbox payment -> signed webhook ->
EnrollmentWorkflow on the Temporal dev server -> verify-session, with real Postgres and SMTP."""

import asyncio
import re
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import Session, select

from api.main import create_app
from core.contracts import workflow_id_for
from core.models import (
    AuditEvent,
    Enrollment,
    ProjectUnlock,
    StripeEvent,
    ToolAccountRecord,
    User,
)
from core.urls import WEBHOOK_PATH
from sandbox.server import BackgroundServer
from tests.utils.helpers import event, forged_session, signed
from tests.utils.stack import Stack, make_settings

CARD_OK = "4242 4242 4242 4242"


def count(engine: sa.Engine, model: Any) -> int:
    with Session(engine) as s:
        return len(s.exec(select(model)).all())


async def create_checkout(http: httpx.AsyncClient, email: str, track: str = "DP") -> dict[str, Any]:
    r = await http.post(
        "/api/payments/create-anonymous-checkout/",
        json={"email": email, "name": "Ada Lovelace", "track": track},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def pay(stack: Stack, checkout_url: str, card: str = CARD_OK) -> httpx.Response:
    """Pay on the sandbox's hosted checkout page, as a browser would (form POST)."""
    async with httpx.AsyncClient(timeout=30) as browser:
        page = await browser.get(checkout_url)
        assert page.status_code == 200 and 'name="card_number"' in page.text
        return await browser.post(
            checkout_url,
            data={
                "email": "ignored@example.com",
                "card_number": card,
                "card_expiry": "12/34",
                "card_cvc": "123",
                "billing_name": "Ada Lovelace",
            },
        )


async def poll_verify(
    http: httpx.AsyncClient, session_id: str, limit_s: float = 60
) -> tuple[httpx.Response, list[int]]:
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        r = await http.get("/api/payments/verify-session/", params={"session_id": session_id})
        seen.append(r.status_code)
        if r.status_code != 202 or asyncio.get_running_loop().time() > deadline:
            return r, seen
        await asyncio.sleep(0.2)


async def test_checkout_pay_webhook_verify_end_to_end(fresh: Stack) -> None:
    async with fresh.http() as http:
        checkout = await create_checkout(http, "  Ada.Lovelace@Example.COM ")
        session_id = checkout["sessionId"]
        assert session_id.startswith("cs_test_") and checkout["url"].startswith(fresh.sandbox_url)
        assert "onramp_checkout" in http.cookies

        # Before payment: pending, never fulfilled.
        r = await http.get("/api/payments/verify-session/", params={"session_id": session_id})
        assert r.status_code == 202
        assert r.json()["error"] == "Account not created yet"
        assert r.json()["progress"]["current_step"] == "payment"

        paid = await pay(fresh, checkout["url"])
        assert paid.status_code == 303
        assert paid.headers["location"].endswith(f"/payment/success?session_id={session_id}")

        r, seen = await poll_verify(http, session_id)
        assert r.status_code == 200, r.text
        body = r.json()

    assert body["success"] is True
    assert body["user"]["email"] == "ada.lovelace@example.com"
    assert body["user"]["role"] == "student" and body["user"]["track"] == "DP"
    assert body["user"]["enrollment_status"] == "ENROLLED"
    assert body["login_required"] is False and body["access"] and body["refresh"]
    assert body["tools_provisioned"] is True
    assert body["superset_url"] and body["prefect_url"] and body["jupyter_url"]
    assert body["workspace_url"] == ""
    assert {t["tool"] for t in body["tools"]} == {"postgres", "superset", "prefect", "jupyter"}
    assert body["progress"]["steps_done"] == body["progress"]["steps_total"]

    with Session(fresh.engine) as s:
        users = s.exec(select(User)).all()
        assert [u.email for u in users] == ["ada.lovelace@example.com"]
        assert users[0].password_hash is None  # nothing usable until the student sets one
        enrollment = s.exec(select(Enrollment)).one()
        assert enrollment.account_created and enrollment.payment_verified
        assert enrollment.amount == 49_900 and enrollment.currency == "usd"
        assert len(s.exec(select(ToolAccountRecord)).all()) == 4
        assert len(s.exec(select(ProjectUnlock)).all()) == 1
        actions = [a.action for a in s.exec(select(AuditEvent)).all()]
        for action in (
            "checkout_created",
            "payment_confirmed",
            "account_created",
            "enrolled",
            "tool_provisioned",
            "project_unlocked",
            "welcome_email_sent",
        ):
            assert action in actions, action

    welcome = fresh.mail.wait_for(lambda m: "ada.lovelace@example.com" in m["To"], timeout=10)
    text = welcome.get_body(("plain",)).get_content()
    assert re.search(r"/set-password\?token=[A-Za-z0-9_-]{20,}", text)
    assert "password:" not in text.lower()  # no password is ever emailed
    assert "SQL foundations" in text  # the first project's guide


async def test_tokens_are_issued_once_and_only_to_the_paying_browser(fresh: Stack) -> None:
    async with fresh.http() as buyer, fresh.http() as other:
        checkout = await create_checkout(buyer, "grace@example.com", track="FSD")
        await pay(fresh, checkout["url"])
        # Another browser that learned the session id (it is in a URL) gets no tokens.
        r, _ = await poll_verify(other, checkout["sessionId"])
        assert r.status_code == 200 and r.json()["login_required"] is True
        assert "access" not in r.json() and "refresh" not in r.json()
        r = await buyer.get(
            "/api/payments/verify-session/", params={"session_id": checkout["sessionId"]}
        )
        assert r.json()["login_required"] is False and r.json()["access"]
        assert r.json()["workspace_url"]  # FSD: code-server
        # Second call from the buyer: the one-time login is spent.
        r = await buyer.get(
            "/api/payments/verify-session/", params={"session_id": checkout["sessionId"]}
        )
        assert r.json()["login_required"] is True and "access" not in r.json()


async def test_existing_email_gets_no_second_account_and_no_tokens(fresh: Stack) -> None:
    async with fresh.http() as first, fresh.http() as second:
        c1 = await create_checkout(first, "linus@example.com", track="DP")
        await pay(fresh, c1["url"])
        r1, _ = await poll_verify(first, c1["sessionId"])
        assert r1.json()["login_required"] is False

        # Someone pays for another track with the same email (in another case).
        c2 = await create_checkout(second, "LINUS@example.com", track="FSD")
        await pay(fresh, c2["url"])
        r2, _ = await poll_verify(second, c2["sessionId"])
    assert r2.status_code == 200
    assert r2.json()["login_required"] is True and "access" not in r2.json()
    assert r2.json()["user"]["id"] == r1.json()["user"]["id"]
    assert count(fresh.engine, User) == 1
    with Session(fresh.engine) as s:
        second_enrollment = s.exec(
            select(Enrollment).where(Enrollment.checkout_session_id == c2["sessionId"])
        ).one()
        assert not second_enrollment.account_created
    # The owner is told by email instead.
    fresh.mail.wait_for(lambda m: "Your new Onramp enrollment" in m["Subject"], timeout=10)


async def test_same_event_delivered_ten_times_concurrently_starts_one_workflow(
    fresh: Stack,
) -> None:
    session = await fresh.sold_session("storm@example.com")
    payload, headers = signed(
        event("checkout.session.completed", session), fresh.settings.stripe_webhook_secret
    )
    async with fresh.http() as http:
        results = await asyncio.gather(
            *[http.post(WEBHOOK_PATH, content=payload, headers=headers) for _ in range(10)]
        )
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        # Each ack says the one workflow for this payment is running (started or found).
        assert {r.json()["outcome"] for r in results} == {"started"}
        # payment_intent.succeeded for the same payment converges on the same workflow.
        r, _ = await poll_verify(http, session["id"])
        assert r.status_code == 200

    handle = fresh.client.get_workflow_handle(workflow_id_for(session["id"]))
    await handle.result()
    # A late redelivery after completion must not start a second run.
    async with fresh.http() as http:
        late = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
    assert late.status_code == 200 and late.json()["outcome"] == "already_started"
    runs = [w async for w in fresh.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) == 1
    assert count(fresh.engine, User) == 1 and count(fresh.engine, Enrollment) == 1
    with Session(fresh.engine) as s:
        stored = s.exec(select(StripeEvent)).one()
        assert stored.deliveries == 11


async def test_payment_intent_event_maps_to_its_session(fresh: Stack) -> None:
    """The original document's event: payment_intent.succeeded with anonymous_checkout."""
    async with fresh.http() as http:
        checkout = await create_checkout(http, "pi@example.com", track="FSD")
        # Pay through the sandbox, but its own webhooks never arrive.
        async with fresh.webhooks_lost():
            await pay(fresh, checkout["url"])
        stripe_session = (
            await httpx.AsyncClient(base_url=fresh.sandbox_url).get(
                f"/v1/checkout/sessions/{checkout['sessionId']}",
                headers={"Authorization": f"Bearer {fresh.settings.stripe_api_key}"},
            )
        ).json()
        pi = {
            "id": stripe_session["payment_intent"],
            "object": "payment_intent",
            "status": "succeeded",
            "metadata": stripe_session["metadata"],
        }
        payload, headers = signed(
            event("payment_intent.succeeded", pi), fresh.settings.stripe_webhook_secret
        )
        r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
        assert r.status_code == 200 and r.json()["outcome"] == "started"
        r, _ = await poll_verify(http, checkout["sessionId"])
        assert r.status_code == 200 and r.json()["track"] == "FSD"


async def test_bad_webhooks_are_rejected_and_write_nothing(fresh: Stack) -> None:
    secret = fresh.settings.stripe_webhook_secret
    evt = event("checkout.session.completed", forged_session(email="forged@example.com"))
    good_payload, good_headers = signed(evt, secret)
    stale_payload, stale_headers = signed(evt, secret, timestamp=1_600_000_000)
    wrong_payload, wrong_headers = signed(evt, "whsec_not_the_secret")
    cases = [
        (good_payload, {"Content-Type": "application/json"}),  # no signature
        (good_payload, {**good_headers, "Stripe-Signature": "t=1,v1=deadbeef"}),
        (stale_payload, stale_headers),
        (wrong_payload, wrong_headers),
        (good_payload.replace(b"forged@", b"victim@"), good_headers),  # tampered body
        (b"\xff\xfe not json", signed("\xff not json", secret)[1]),
        (b"garbage", signed("garbage", secret)[1]),
        # Signed correctly, but not an event object.
        signed("[]", secret),
        signed('"checkout.session.completed"', secret),
        signed('{"id": "evt_1", "type": "checkout.session.completed", "data": []}', secret),
    ]
    async with fresh.http() as http:
        for payload, headers in cases:
            r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
            assert r.status_code == 400, (payload[:40], r.text)
            assert set(r.json()) >= {"error", "message"}
    assert count(fresh.engine, StripeEvent) == 0
    assert count(fresh.engine, User) == 0 and count(fresh.engine, Enrollment) == 0


async def test_unpaid_session_is_never_fulfilled(fresh: Stack) -> None:
    async with fresh.http() as http:
        checkout = await create_checkout(http, "unpaid@example.com")
        # A completed-but-unpaid Session (delayed payment method) is announced...
        session = forged_session(email="unpaid@example.com", session_id=checkout["sessionId"])
        session["payment_status"] = "unpaid"
        payload, headers = signed(
            event("checkout.session.completed", session), fresh.settings.stripe_webhook_secret
        )
        r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
        assert r.json()["outcome"] == "awaiting_payment"
        # ...and verify-session, asking Stripe (the sandbox says unpaid), does not fulfil it.
        for _ in range(3):
            r = await http.get(
                "/api/payments/verify-session/", params={"session_id": checkout["sessionId"]}
            )
            assert r.status_code == 202
    assert count(fresh.engine, User) == 0
    with Session(fresh.engine) as s:
        assert s.exec(select(Enrollment)).one().status == "PAYMENT_PENDING"
    handle = fresh.client.get_workflow_handle(workflow_id_for(checkout["sessionId"]))
    runs = [w async for w in fresh.client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert runs == []


async def test_verify_session_fulfils_when_the_webhook_is_late(fresh: Stack) -> None:
    async with fresh.http() as http:
        checkout = await create_checkout(http, "late@example.com", track="FSD")
        async with fresh.webhooks_lost():
            await pay(fresh, checkout["url"])
            r, seen = await poll_verify(http, checkout["sessionId"])
    assert r.status_code == 200 and seen[0] == 202
    assert r.json()["login_required"] is False
    assert count(fresh.engine, StripeEvent) == 0  # no webhook ever arrived


async def test_verify_session_input_errors(fresh: Stack) -> None:
    async with fresh.http() as http:
        for bad in ["", "abc", "cs_test_", "cs_test_<script>", "pi_123456789", "cs_prod_12345678"]:
            r = await http.get("/api/payments/verify-session/", params={"session_id": bad})
            assert r.status_code == 400, bad
            assert r.json()["error"]
        r = await http.get("/api/payments/verify-session/")
        assert r.status_code == 400
        r = await http.get(
            "/api/payments/verify-session/", params={"session_id": "cs_test_doesnotexist123"}
        )
        assert r.status_code == 404 and r.json()["error"] == "Unknown session"


async def test_checkout_input_errors_write_nothing(fresh: Stack) -> None:
    base = {"email": "a@example.com", "name": "A", "track": "DP"}
    bad_bodies = [
        {**base, "email": "not-an-email"},
        {**base, "name": "   "},
        {**base, "name": "x" * 101},
        {**base, "track": "ML"},
        {**base, "success_url": "https://evil.example/steal"},
        {**base, "cancel_url": "javascript:alert(1)"},
        {**base, "success_url": "//evil.example/x"},
        {k: v for k, v in base.items() if k != "email"},
    ]
    async with fresh.http() as http:
        for body in bad_bodies:
            r = await http.post("/api/payments/create-anonymous-checkout/", json=body)
            assert r.status_code == 400, (body, r.text)
            assert set(r.json()) >= {"error", "message"}
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400
    assert count(fresh.engine, Enrollment) == 0


async def test_allowed_redirects_and_checkout_session_shape(fresh: Stack) -> None:
    success = f"{fresh.api_url}/payment/success?from=test"
    async with fresh.http() as http:
        checkout = await create_checkout(http, "shape@example.com")
        r = await http.post(
            "/api/payments/create-anonymous-checkout/",
            json={
                "email": "shape2@example.com",
                "name": "Shape",
                "track": "FSD",
                "success_url": success,
                "cancel_url": f"{fresh.api_url}/get-started",
            },
        )
        assert r.status_code == 200
    async with httpx.AsyncClient(base_url=fresh.sandbox_url) as sb:
        auth = {"Authorization": f"Bearer {fresh.settings.stripe_api_key}"}
        s1 = (await sb.get(f"/v1/checkout/sessions/{checkout['sessionId']}", headers=auth)).json()
        s2 = (await sb.get(f"/v1/checkout/sessions/{r.json()['sessionId']}", headers=auth)).json()
    assert s1["mode"] == "payment" and s1["customer_email"] == "shape@example.com"
    assert s1["metadata"] == {
        "email": "shape@example.com",
        "name": "Ada Lovelace",
        "track": "DP",
        "anonymous_checkout": "true",
        "cohort": "DP-2027-01",
    }
    # The Session lives as long as the seat it holds (CHECKOUT_HOLD_MINUTES).
    assert abs(s1["expires_at"] - s1["created"] - 30 * 60) <= 5
    assert s1["amount_total"] == 49_900
    assert s1["success_url"].endswith("/payment/success?session_id={CHECKOUT_SESSION_ID}")
    assert s2["success_url"] == success + "&session_id={CHECKOUT_SESSION_ID}"
    assert s2["amount_total"] == 59_900


async def test_webhook_while_temporal_is_down_is_redelivered(
    fresh: Stack, database_url: str
) -> None:
    """Temporal unreachable -> 5xx (Stripe redelivers) -> success on redelivery."""
    down = make_settings(
        database_url,
        "127.0.0.1:1",  # nothing listens on port 1
        fresh.mail,
        temporal_task_queue=fresh.settings.temporal_task_queue,
        stripe_api_base=fresh.settings.stripe_base,
    )
    session = await fresh.sold_session("outage@example.com")
    payload, headers = signed(
        event("checkout.session.completed", session), fresh.settings.stripe_webhook_secret
    )
    with BackgroundServer(create_app(down), port=down.port) as broken_api:
        async with httpx.AsyncClient(base_url=broken_api.url, timeout=30) as http:
            r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
    assert r.status_code == 503 and r.json()["error"]
    assert count(fresh.engine, User) == 0
    async with fresh.http() as http:
        r = await http.post(WEBHOOK_PATH, content=payload, headers=headers)
        assert r.status_code == 200 and r.json()["outcome"] == "started"
        r, _ = await poll_verify(http, session["id"])
    assert r.status_code == 200
    assert count(fresh.engine, User) == 1


async def test_health_reports_dependencies(fresh: Stack) -> None:
    async with fresh.http() as http:
        r = await http.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_development_stand_in_links_explain_themselves(fresh: Stack) -> None:
    async with fresh.http() as http:
        r = await http.get("/dev-tools/superset/ada")
        assert r.status_code == 200
        assert "development stand-in" in r.text and "SUPERSET_URL" in r.text
        r = await http.get("/dev-tools/<script>/ada")
        assert r.status_code == 404 and "<script>" not in r.text
