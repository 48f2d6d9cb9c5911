"""The sandbox's /v1 API, driven by the real stripe SDK as the app drives Stripe."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import stripe

from sandbox.fixtures import Fixtures
from tests.sandbox.sandbox_testkit import API_KEY, Sandbox


class TestCheckoutSessions:
    def test_create_retrieve_list_expire(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session(client_reference_id="enr_42")

        assert session.id.startswith("cs_test_")
        assert session.object == "checkout.session"
        assert (session.status, session.payment_status) == ("open", "unpaid")
        assert (session.amount_total, session.amount_subtotal, session.currency) == (
            4900,
            4900,
            "usd",
        )
        assert session.url == f"{sandbox.url}/c/pay/{session.id}"
        assert session.metadata["track"] == "data"
        assert session.client_reference_id == "enr_42"
        assert session.payment_intent is None
        assert 24 * 3600 - 5 <= session.expires_at - session.created <= 24 * 3600

        fetched = sandbox.client.v1.checkout.sessions.retrieve(session.id)
        assert fetched.to_dict() == session.to_dict()

        paid = sandbox.pay(session.id).json()
        intent_id = paid["payment_intent"]["id"]
        other = sandbox.create_session()
        found = sandbox.client.v1.checkout.sessions.list({"payment_intent": intent_id})
        assert [s.id for s in found.data] == [session.id]
        assert found.has_more is False

        expired = sandbox.client.v1.checkout.sessions.expire(other.id)
        assert expired.status == "expired"
        assert expired.url is None
        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.checkout.sessions.expire(session.id)
        assert excinfo.value.http_status == 400

    def test_expire_sends_event_with_request_ids(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        key = str(uuid.uuid4())

        sandbox.client.v1.checkout.sessions.expire(session.id, options={"idempotency_key": key})

        (event,) = sandbox.receiver.events(1)
        assert event.type == "checkout.session.expired"
        assert event.data.object.id == session.id
        assert event.request.idempotency_key == key
        assert event.request.id.startswith("req_")

    def test_expand_line_items_and_payment_intent(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session(expand=["line_items"])
        assert session.line_items.data[0].description == "Data engineering track"
        assert session.line_items.data[0].amount_total == 4900
        sandbox.pay(session.id)

        expanded = sandbox.client.v1.checkout.sessions.retrieve(
            session.id, {"expand": ["payment_intent.latest_charge"]}
        )
        assert expanded.payment_intent.object == "payment_intent"
        assert expanded.payment_intent.latest_charge.object == "charge"
        items = sandbox.client.v1.checkout.sessions.line_items.list(session.id)
        assert [item.quantity for item in items.data] == [1]

    def test_list_filters_and_pagination(self, sandbox: Sandbox) -> None:
        created = [sandbox.create_session().id for _ in range(5)]
        sandbox.client.v1.checkout.sessions.expire(created[0])

        page = sandbox.client.v1.checkout.sessions.list({"limit": 2})
        assert [s.id for s in page.data] == created[::-1][:2]
        assert page.has_more is True
        everything = [
            s.id for s in sandbox.client.v1.checkout.sessions.list({"limit": 2}).auto_paging_iter()
        ]
        assert everything == created[::-1]

        open_ids = sandbox.client.v1.checkout.sessions.list({"status": "open"})
        assert [s.id for s in open_ids.data] == created[:0:-1]
        now = int(time.time())
        assert len(sandbox.client.v1.checkout.sessions.list({"created": {"gte": now - 60}})) == 5
        assert len(sandbox.client.v1.checkout.sessions.list({"created": {"lte": now - 60}})) == 0

    def test_same_idempotency_key_replays_the_first_response(self, sandbox: Sandbox) -> None:
        key = str(uuid.uuid4())
        params = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "eur",
                        "unit_amount": 1000,
                        "product_data": {"name": "Course"},
                    },
                    "quantity": 2,
                }
            ],
            "success_url": "http://127.0.0.1:8000/ok",
        }
        sessions = sandbox.client.v1.checkout.sessions
        one = sessions.create(params, options={"idempotency_key": key})
        two = sessions.create(params, options={"idempotency_key": key})
        assert one.id == two.id
        assert one.amount_total == 2000
        assert len(sessions.list().data) == 1

        changed = {**params, "customer_email": "other@example.com"}
        with pytest.raises(stripe.IdempotencyError):
            sessions.create(changed, options={"idempotency_key": key})

    def test_failed_validation_does_not_burn_the_key(self, sandbox: Sandbox) -> None:
        key = str(uuid.uuid4())
        with pytest.raises(stripe.InvalidRequestError):
            sandbox.create_session(line_items=[], options={"idempotency_key": key})
        session = sandbox.client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [
                    {
                        "price_data": {
                            "currency": "usd",
                            "unit_amount": 500,
                            "product_data": {"name": "x"},
                        },
                        "quantity": 1,
                    }
                ],
            },
            options={"idempotency_key": key},
        )
        assert session.status == "open"

    def test_unknown_id_is_a_404_invalid_request(self, sandbox: Sandbox) -> None:
        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.checkout.sessions.retrieve("cs_test_missing")
        assert excinfo.value.http_status == 404
        assert excinfo.value.code == "resource_missing"
        assert "cs_test_missing" in str(excinfo.value.user_message)
        for retrieve in (
            sandbox.client.v1.payment_intents.retrieve,
            sandbox.client.v1.charges.retrieve,
            sandbox.client.v1.refunds.retrieve,
        ):
            with pytest.raises(stripe.InvalidRequestError) as excinfo:
                retrieve("xx_missing")
            assert excinfo.value.http_status == 404

    @pytest.mark.parametrize(
        ("override", "param", "code"),
        [
            ({"mode": None}, "mode", "parameter_missing"),
            ({"line_items": None}, "line_items", "parameter_missing"),
            (
                {"line_items": [{"price_data": {"currency": "usd", "unit_amount": 100}}]},
                "line_items[0][price_data][product_data]",
                "parameter_missing",
            ),
            (
                {
                    "line_items": [
                        {
                            "price_data": {
                                "currency": "usd",
                                "unit_amount": "lots",
                                "product_data": {"name": "x"},
                            },
                            "quantity": 1,
                        }
                    ]
                },
                "line_items[0][price_data][unit_amount]",
                "parameter_invalid_integer",
            ),
            ({"customer_email": "not-an-email"}, "customer_email", "email_invalid"),
            ({"success_url": "javascript:alert(1)"}, "success_url", "url_invalid"),
            ({"metdata": {"a": "b"}}, "metdata", "parameter_unknown"),
            (
                {"payment_intent_data": {"metdata": {"a": "b"}}},
                "payment_intent_data[metdata]",
                "parameter_unknown",
            ),
        ],
    )
    def test_invalid_params_are_rejected_like_stripe(
        self, sandbox: Sandbox, override: dict, param: str, code: str
    ) -> None:
        overrides = {key: value for key, value in override.items() if value is not None}
        removed = [key for key, value in override.items() if value is None]
        params = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 100,
                        "product_data": {"name": "x"},
                    },
                    "quantity": 1,
                }
            ],
            **overrides,
        }
        for key in removed:
            params.pop(key)
        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.checkout.sessions.create(params)
        assert excinfo.value.http_status == 400
        assert excinfo.value.param == param
        assert excinfo.value.code == code

    def test_expires_at_bounds(self, sandbox: Sandbox) -> None:
        soon = int(time.time()) + 3600
        assert sandbox.create_session(expires_at=soon).expires_at == soon
        with pytest.raises(stripe.InvalidRequestError):
            sandbox.create_session(expires_at=int(time.time()) + 25 * 3600)
        with pytest.raises(stripe.InvalidRequestError):
            sandbox.create_session(expires_at=int(time.time()) + 60)


class TestAuthentication:
    def test_wrong_or_missing_key_is_a_401(self, sandbox: Sandbox) -> None:
        wrong = stripe.StripeClient("sk_test_wrong_key", base_addresses={"api": sandbox.url})
        with pytest.raises(stripe.AuthenticationError) as excinfo:
            wrong.v1.checkout.sessions.list()
        assert excinfo.value.http_status == 401

        anonymous = sandbox.http.get("/v1/checkout/sessions")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["type"] == "invalid_request_error"

    def test_basic_auth_and_unknown_urls(self, sandbox: Sandbox) -> None:
        response = sandbox.http.get("/v1/nope", auth=httpx.BasicAuth(API_KEY, ""))
        assert response.status_code == 404
        assert response.json()["error"]["message"].startswith("Unrecognized request URL")
        assert response.headers["request-id"].startswith("req_")


class TestRefunds:
    def test_partial_then_full_refund(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        paid = sandbox.pay(session.id).json()
        intent_id, charge_id = paid["payment_intent"]["id"], paid["charge"]["id"]
        sandbox.receiver.events(2)

        partial = sandbox.client.v1.refunds.create({"payment_intent": intent_id, "amount": 900})
        assert (partial.object, partial.amount, partial.status) == ("refund", 900, "succeeded")
        assert partial.charge == charge_id and partial.payment_intent == intent_id
        charge = sandbox.client.v1.charges.retrieve(charge_id)
        assert (charge.amount_refunded, charge.refunded) == (900, False)

        rest = sandbox.client.v1.refunds.create({"charge": charge_id})
        assert rest.amount == 4000
        charge = sandbox.client.v1.charges.retrieve(charge_id)
        assert (charge.amount_refunded, charge.refunded) == (4900, True)
        assert sandbox.client.v1.refunds.retrieve(rest.id).amount == 4000

        events = sandbox.receiver.events(4)
        refunded = [e for e in events if e.type == "charge.refunded"]
        assert [e.data.object.amount_refunded for e in refunded] == [900, 4900]
        assert all(e.data.object.object == "charge" for e in refunded)

        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.refunds.create({"charge": charge_id})
        assert excinfo.value.code == "charge_already_refunded"

    def test_refund_larger_than_charge_is_refused(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        intent_id = sandbox.pay(session.id).json()["payment_intent"]["id"]
        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.refunds.create({"payment_intent": intent_id, "amount": 5000})
        assert excinfo.value.param == "amount"

    def test_unpaid_intent_cannot_be_refunded(self, sandbox: Sandbox) -> None:
        session = sandbox.create_session()
        intent_id = sandbox.pay(session.id, **{"async": True}).json()["payment_intent"]["id"]
        with pytest.raises(stripe.InvalidRequestError) as excinfo:
            sandbox.client.v1.refunds.create({"payment_intent": intent_id})
        assert excinfo.value.code == "charge_not_refundable"


class TestFixtureContract:
    def test_objects_have_every_key_of_stripes_examples(self, sandbox: Sandbox) -> None:
        fixtures = Fixtures.load()
        session = sandbox.create_session()
        sandbox.pay(session.id)
        session = sandbox.client.v1.checkout.sessions.retrieve(session.id)
        intent = sandbox.client.v1.payment_intents.retrieve(session.payment_intent)
        charge = sandbox.client.v1.charges.retrieve(intent.latest_charge)
        refund = sandbox.client.v1.refunds.create({"charge": charge.id, "amount": 100})
        by_type = {e.type: e for e in sandbox.receiver.events(2)}
        event = by_type["checkout.session.completed"]

        for resource, obj in [
            ("checkout.session", session),
            ("payment_intent", intent),
            ("charge", charge),
            ("refund", refund),
            ("event", event),
        ]:
            missing = fixtures.keys(resource) - set(obj.to_dict())
            assert not missing, f"{resource} lacks {sorted(missing)}"
        assert fixtures.keys("checkout.session") <= set(event.data.object.to_dict())
        intent_event = by_type["payment_intent.succeeded"]
        assert fixtures.keys("payment_intent") <= set(intent_event.data.object.to_dict())
