"""Webhook delivery: retries with backoff, giving up, resends, disputes, runtime URL changes."""

from __future__ import annotations

import socket
import time

import stripe

from tests.sandbox.sandbox_testkit import Sandbox, wait_until


def _expire_one(sandbox: Sandbox) -> str:
    """A fresh Session expired via the API: exactly one event."""
    session = sandbox.create_session()
    sandbox.client.v1.checkout.sessions.expire(session.id)
    return session.id


def _only_event(sandbox: Sandbox, status: str) -> dict:
    return wait_until(
        lambda: next(
            (e for e in sandbox.sandbox_events() if e["delivery"]["status"] == status), None
        )
    )


class TestDelivery:
    def test_retried_until_the_endpoint_accepts(self, sandbox: Sandbox) -> None:
        sandbox.receiver.answer_with(500, 500)

        session_id = _expire_one(sandbox)

        deliveries = sandbox.receiver.wait_for(3)
        assert [d.status for d in deliveries] == [500, 500, 200]
        assert len({d.body for d in deliveries}) == 1, "every attempt sends the same event"
        record = _only_event(sandbox, "delivered")
        assert [a["status_code"] for a in record["delivery"]["attempts"]] == [500, 500, 200]
        assert [a["attempt"] for a in record["delivery"]["attempts"]] == [1, 2, 3]
        (event,) = sandbox.receiver.events(1)
        assert event.data.object.id == session_id
        assert sandbox.client.v1.events.retrieve(event.id).pending_webhooks == 0

    def test_gives_up_after_the_last_retry(self, sandbox: Sandbox) -> None:
        sandbox.receiver.answer_with(500, 503, 500, 502, 500)

        _expire_one(sandbox)

        record = _only_event(sandbox, "failed")
        attempts = record["delivery"]["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 503, 500, 502]
        assert len(sandbox.receiver.deliveries) == 4

        resent = sandbox.http.post(f"/_sandbox/events/{record['id']}/resend").json()
        assert resent["delivered"] is False
        resent = sandbox.http.post(f"/_sandbox/events/{record['id']}/resend").json()
        assert resent["delivered"] is True
        assert resent["delivery"]["status"] == "delivered"
        assert len(resent["delivery"]["attempts"]) == 6

    def test_unreachable_endpoint_records_the_error(self, sandbox: Sandbox) -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/webhook"
        assert sandbox.http.post("/_sandbox/webhook_url", json={"url": dead_url}).status_code == 200

        _expire_one(sandbox)

        record = _only_event(sandbox, "failed")
        assert all(a["status_code"] is None and a["error"] for a in record["delivery"]["attempts"])
        assert sandbox.receiver.deliveries == []

    def test_webhook_url_can_be_changed_and_switched_off(self, sandbox: Sandbox) -> None:
        sandbox.http.post("/_sandbox/webhook_url", json={"url": None})
        _expire_one(sandbox)
        record = _only_event(sandbox, "no_endpoint")
        assert record["event"]["pending_webhooks"] == 0

        sandbox.http.post("/_sandbox/webhook_url", json={"url": sandbox.receiver.url})
        resent = sandbox.http.post(f"/_sandbox/events/{record['id']}/resend").json()
        assert resent["delivered"] is True
        assert sandbox.receiver.events(1)[0].id == record["id"]

    def test_invalid_webhook_url_is_refused(self, sandbox: Sandbox) -> None:
        response = sandbox.http.post("/_sandbox/webhook_url", json={"url": "ftp://x"})
        assert response.status_code == 400
        assert sandbox.http.get("/_sandbox/health").json()["webhook_url"] == sandbox.receiver.url


class TestDisputes:
    def test_dispute_created_then_lost(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        charge_id = sandbox.pay(session.id).json()["charge"]["id"]
        sandbox.receiver.events(2)

        dispute = sandbox.http.post(f"/_sandbox/charges/{charge_id}/dispute").json()
        assert dispute["object"] == "dispute" and dispute["charge"] == charge_id
        assert dispute["status"] == "needs_response" and dispute["amount"] == 4900
        closed = sandbox.http.post(
            f"/_sandbox/disputes/{dispute['id']}/close", json={"status": "lost"}
        ).json()
        assert closed["status"] == "lost"

        events = sandbox.receiver.events(4)
        by_type = {e.type: e for e in events}
        assert by_type["charge.dispute.created"].data.object.status == "needs_response"
        assert by_type["charge.dispute.closed"].data.object.status == "lost"
        assert by_type["charge.dispute.closed"].data.object.payment_intent == (
            session_intent := sandbox.client.v1.checkout.sessions.retrieve(
                session.id
            ).payment_intent
        )
        assert session_intent.startswith("pi_")
        assert sandbox.client.v1.charges.retrieve(charge_id).disputed is True
        again = sandbox.http.post(
            f"/_sandbox/disputes/{dispute['id']}/close", json={"status": "won"}
        )
        assert again.status_code == 409


class TestEventsApi:
    def test_events_are_listed_newest_first_and_filtered(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        sandbox.pay(session.id)
        _expire_one(sandbox)

        types = [e.type for e in sandbox.client.v1.events.list().data]
        assert types[0] == "checkout.session.expired"
        assert set(types) == {
            "checkout.session.expired",
            "checkout.session.completed",
            "payment_intent.succeeded",
        }
        only = sandbox.client.v1.events.list({"type": "checkout.session.*"})
        assert {e.type for e in only.data} == {
            "checkout.session.expired",
            "checkout.session.completed",
        }
        assert isinstance(only.data[0], stripe.Event)


class TestNonBlocking:
    def test_a_hanging_endpoint_does_not_slow_payments(self, sandbox: Sandbox) -> None:
        # A socket that listens but never answers: the kernel accepts, nobody replies.
        with socket.socket() as hanging:
            hanging.bind(("127.0.0.1", 0))
            hanging.listen(16)
            url = f"http://127.0.0.1:{hanging.getsockname()[1]}/webhook"
            sandbox.http.post("/_sandbox/webhook_url", json={"url": url})
            session = sandbox.create_session()

            started = time.monotonic()
            paid = sandbox.pay(session.id)
            elapsed = time.monotonic() - started

            assert paid.status_code == 200
            assert elapsed < 1.0
            assert {e["delivery"]["status"] for e in sandbox.sandbox_events()} == {"pending"}
