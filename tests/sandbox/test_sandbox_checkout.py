"""Paying on the hosted checkout page (and the JSON control API) and the events that follow."""

from __future__ import annotations

import time

import pytest
import stripe

from tests.sandbox.sandbox_testkit import WEBHOOK_SECRET, Sandbox

CARD = {
    "email": "ada@example.com",
    "card_number": "4242 4242 4242 4242",
    "card_expiry": "12 / 34",
    "card_cvc": "123",
    "billing_name": "Ada Lovelace",
}


class TestHostedPage:
    def test_page_shows_an_accessible_form(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()

        page = sandbox.http.get(f"/c/pay/{session.id}")

        assert page.status_code == 200
        html = page.text
        assert "$49.00" in html and "Data engineering track" in html
        for field in ("email", "card_number", "card_expiry", "card_cvc", "billing_name"):
            assert f'<label for="{field}">' in html
            assert f'id="{field}" name="{field}"' in html
        assert f'action="/c/pay/{session.id}"' in html
        assert 'href="http://127.0.0.1:8000/enroll?cancelled=1"' in html
        assert "default-src 'none'" in page.headers["content-security-policy"]

    def test_paying_with_4242_redirects_and_sends_signed_events(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()

        response = sandbox.http.post(f"/c/pay/{session.id}", data=CARD)

        assert response.status_code == 303
        assert response.headers["location"] == (
            f"http://127.0.0.1:8000/welcome?session_id={session.id}"
        )
        completed, succeeded = sorted(
            sandbox.receiver.events(2), key=lambda e: e.type != "checkout.session.completed"
        )
        assert completed.type == "checkout.session.completed"
        assert completed.id.startswith("evt_") and completed.object == "event"
        assert completed.livemode is False and completed.api_version == stripe.api_version
        paid = completed.data.object
        assert (paid.id, paid.status, paid.payment_status) == (session.id, "complete", "paid")
        assert paid.metadata["track"] == "data"
        assert paid.customer_details.email == "ada@example.com"
        assert paid.customer_details.name == "Ada Lovelace"
        assert succeeded.type == "payment_intent.succeeded"
        intent = succeeded.data.object
        assert intent.id == paid.payment_intent and intent.id.startswith("pi_")
        assert intent.status == "succeeded" and intent.amount_received == 4900
        assert intent.metadata["track"] == "data"
        assert intent.latest_charge.startswith("ch_")

        fetched = sandbox.client.v1.checkout.sessions.retrieve(session.id)
        assert (fetched.status, fetched.payment_status) == ("complete", "paid")
        charge = sandbox.client.v1.charges.retrieve(intent.latest_charge)
        assert charge.paid and charge.payment_method_details.card.last4 == "4242"

    def test_signature_fails_with_a_wrong_secret(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        sandbox.http.post(f"/c/pay/{session.id}", data=CARD)
        delivery = sandbox.receiver.wait_for(1)[0]
        header = delivery.headers["stripe-signature"]
        assert header.startswith("t=") and ",v1=" in header

        stripe.Webhook.construct_event(delivery.body, header, WEBHOOK_SECRET)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(delivery.body, header, "whsec_not_the_secret")
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(delivery.body + b" ", header, WEBHOOK_SECRET)

    @pytest.mark.parametrize(
        ("number", "message"),
        [
            ("4000 0000 0000 0002", "Your card was declined."),
            ("4000000000009995", "Your card has insufficient funds."),
            ("1234 5678 9012 3456", "Your card number is invalid."),
        ],
    )
    def test_refused_cards_show_the_reason_and_send_nothing(
        self, sandbox: Sandbox, number: str, message: str
    ) -> None:
        session = sandbox.create_session()

        response = sandbox.http.post(f"/c/pay/{session.id}", data={**CARD, "card_number": number})

        assert response.status_code == 402
        assert message.replace("'", "&#39;") in response.text
        assert 'role="alert"' in response.text
        assert sandbox.client.v1.checkout.sessions.retrieve(session.id).status == "open"
        time.sleep(0.2)
        assert sandbox.receiver.deliveries == []
        assert sandbox.sandbox_events() == []

    def test_incomplete_expiry_is_asked_again(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        response = sandbox.http.post(f"/c/pay/{session.id}", data={**CARD, "card_expiry": ""})
        assert response.status_code == 400
        assert "expiration date is incomplete" in response.text
        assert 'id="card_expiry" name="card_expiry"' in response.text

    def test_paid_and_expired_sessions_cannot_be_paid_again(self, sandbox: Sandbox) -> None:
        paid = sandbox.create_session()
        sandbox.http.post(f"/c/pay/{paid.id}", data=CARD)
        again = sandbox.http.post(f"/c/pay/{paid.id}", data=CARD)
        assert again.status_code == 409
        assert "already complete" in again.text
        assert "card_number" not in again.text

        expired = sandbox.create_session()
        sandbox.client.v1.checkout.sessions.expire(expired.id)
        page = sandbox.http.get(f"/c/pay/{expired.id}")
        assert page.status_code == 410
        assert "expired" in page.text
        assert sandbox.http.post(f"/c/pay/{expired.id}", data=CARD).status_code == 410
        assert sandbox.http.get("/c/pay/cs_test_unknown").status_code == 404

    def test_everything_echoed_is_escaped(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session(
            customer_email=None,
            line_items=[
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 4900,
                        "product_data": {"name": "<script>alert('x')</script>"},
                    },
                    "quantity": 1,
                }
            ],
        )
        response = sandbox.http.post(
            f"/c/pay/{session.id}",
            data={**CARD, "email": '"><img src=x onerror=alert(1)>', "card_number": "0"},
        )
        assert "<script>alert" not in response.text
        assert "&lt;script&gt;" in response.text
        assert "<img src=x" not in response.text


class TestControlApi:
    def test_json_pay_matches_the_form(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()

        declined = sandbox.pay(session.id, card_number="4000000000000002")
        assert declined.status_code == 402
        assert declined.json()["error"]["decline_code"] == "generic_decline"

        paid = sandbox.pay(session.id, card_number="4242424242424242")
        assert paid.status_code == 200
        body = paid.json()
        assert body["status"] == "succeeded"
        assert body["checkout_session"]["payment_status"] == "paid"
        assert body["redirect_url"].endswith(session.id)
        # Like Stripe, events are delivered concurrently, so their order is not promised.
        assert {e.type for e in sandbox.receiver.events(2)} == {
            "checkout.session.completed",
            "payment_intent.succeeded",
        }

    def test_delayed_payment_that_succeeds(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()

        pending = sandbox.pay(session.id, **{"async": True}).json()
        assert pending["checkout_session"]["status"] == "complete"
        assert pending["checkout_session"]["payment_status"] == "unpaid"
        (completed,) = sandbox.receiver.events(1)
        assert completed.type == "checkout.session.completed"
        assert completed.data.object.payment_status == "unpaid"

        result = sandbox.http.post(
            f"/_sandbox/checkout/sessions/{session.id}/async_result", json={"succeeded": True}
        )
        assert result.status_code == 200
        by_type = {e.type: e for e in sandbox.receiver.events(3)}
        succeeded = by_type["checkout.session.async_payment_succeeded"]
        assert succeeded.data.object.payment_status == "paid"
        assert by_type["payment_intent.succeeded"].data.object.status == "succeeded"
        fetched = sandbox.client.v1.checkout.sessions.retrieve(session.id)
        assert fetched.payment_status == "paid"
        intent = sandbox.client.v1.payment_intents.retrieve(fetched.payment_intent)
        assert intent.status == "succeeded"

    def test_delayed_payment_that_fails(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        sandbox.pay(session.id, **{"async": True})

        result = sandbox.http.post(
            f"/_sandbox/checkout/sessions/{session.id}/async_result", json={"succeeded": False}
        )

        assert result.status_code == 200
        events = sandbox.receiver.events(3)
        failed = [e for e in events if e.type == "checkout.session.async_payment_failed"]
        assert len(failed) == 1
        assert failed[0].data.object.payment_status == "unpaid"
        assert sandbox.client.v1.checkout.sessions.retrieve(session.id).payment_status == "unpaid"
        again = sandbox.http.post(
            f"/_sandbox/checkout/sessions/{session.id}/async_result", json={"succeeded": True}
        )
        assert again.status_code == 409

    def test_email_is_required_when_the_session_has_none(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session(customer_email=None)

        missing = sandbox.pay(session.id)
        assert missing.status_code == 400
        assert missing.json()["error"]["param"] == "email"

        paid = sandbox.pay(session.id, email="grace@example.com", billing_name="Grace Hopper")
        details = paid.json()["checkout_session"]["customer_details"]
        assert (details["email"], details["name"]) == ("grace@example.com", "Grace Hopper")
