"""The Stripe stand-in checked against Stripe's own definitions (stripe-python's generated types).

One scenario drives the app's StripeGateway and the sandbox through every endpoint and event
the app depends on, recording each request the SDK sends and each answer it gets; the tests
then hold the requests to the `stripe.params` TypedDicts, and the objects and webhook events
to the resource classes' annotations (tests/sandbox/stripe_definitions.py).
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from fastapi.routing import APIRoute
from stripe._api_requestor import _APIRequestor
from stripe._list_object import ListObject
from stripe.params import EventListParams, RefundCreateParams
from stripe.params.checkout import SessionCreateParams, SessionListParams
from stripe.params.checkout._session_create_params import (
    SessionCreateParamsLineItem,
    SessionCreateParamsLineItemPriceData,
    SessionCreateParamsLineItemPriceDataProductData,
    SessionCreateParamsPaymentIntentData,
)
from stripe.params.checkout._session_line_item_list_params import SessionLineItemListParams

from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.tracks import DP, TRACKS
from sandbox import api
from sandbox import service as sandbox_service
from sandbox.app import create_app
from sandbox.fixtures import Fixtures
from sandbox.server import BackgroundServer
from tests.sandbox.sandbox_testkit import (
    API_KEY,
    RETRY_DELAYS,
    WEBHOOK_SECRET,
    Sandbox,
    WebhookReceiver,
)
from tests.sandbox.stripe_definitions import (
    Endpoint,
    endpoints,
    object_errors,
    param_errors,
    typed_dict_fields,
)

# The services behind `client.v1.<...>` for the resources the sandbox serves.
SDK_ENDPOINTS = endpoints(
    stripe.checkout.SessionService,
    stripe.checkout.SessionLineItemService,
    stripe.PaymentIntentService,
    stripe.ChargeService,
    stripe.RefundService,
    stripe.DisputeService,
    stripe.EventService,
)

# What `data.object` of each event the sandbox sends is (Stripe's event type reference).
EVENT_OBJECTS: dict[str, type] = {
    "checkout.session.completed": stripe.checkout.Session,
    "checkout.session.async_payment_succeeded": stripe.checkout.Session,
    "checkout.session.async_payment_failed": stripe.checkout.Session,
    "checkout.session.expired": stripe.checkout.Session,
    "payment_intent.succeeded": stripe.PaymentIntent,
    "payment_intent.payment_failed": stripe.PaymentIntent,
    "charge.refunded": stripe.Charge,
    "charge.dispute.created": stripe.Dispute,
    "charge.dispute.closed": stripe.Dispute,
}

# Stripe's example object of each resource the sandbox builds on, and the class describing it.
FIXTURE_CLASSES: dict[str, type] = {
    "checkout.session": stripe.checkout.Session,
    "item": stripe.LineItem,
    "payment_intent": stripe.PaymentIntent,
    "charge": stripe.Charge,
    "refund": stripe.Refund,
    "dispute": stripe.Dispute,
    "event": stripe.Event,
}
# The example predates a field the SDK's API version requires; the sandbox adds it.
KNOWN_FIXTURE_GAPS = {
    "dispute": ["evidence_details.submission_method: missing (Dispute.EvidenceDetails requires it)"]
}

# Every StripeGateway method sends requests, except the webhook check (fed the events below).
NO_REQUEST_GATEWAY_METHODS = {"verify_webhook"}


@dataclass
class Exchange:
    """One request as the SDK sends it (the params as the caller passed them) and its answer."""

    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: Any
    gateway_method: str | None

    @property
    def label(self) -> str:
        via = f" (StripeGateway.{self.gateway_method})" if self.gateway_method else ""
        return f"{self.method.upper()} {self.path}{via}"


@dataclass
class Recording:
    exchanges: list[Exchange] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    gateway_method: str | None = None


def _record_requests(recording: Recording, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap the SDK's one funnel for every request (`_APIRequestor.request_raw`)."""
    original = _APIRequestor.request_raw

    def request_raw(
        self: _APIRequestor, method: str, url: str, params: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        sent = copy.deepcopy(dict(params or {}))
        body, status, headers = original(self, method, url, params, *args, **kwargs)
        text = body.decode() if isinstance(body, bytes) else str(body)
        recording.exchanges.append(
            Exchange(method, url, sent, status, json.loads(text), recording.gateway_method)
        )
        return body, status, headers

    monkeypatch.setattr(_APIRequestor, "request_raw", request_raw)


class GatewayDriver:
    """Calls StripeGateway methods, tagging the requests each makes."""

    def __init__(self, gateway: StripeGateway, recording: Recording) -> None:
        self._gateway = gateway
        self._recording = recording
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._gateway, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._recording.gateway_method = name
            try:
                return method(*args, **kwargs)
            finally:
                self._recording.gateway_method = None
                self.called.add(name)

        return call


@dataclass
class Scenario:
    recording: Recording
    gateway_calls: set[str]


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    receiver = WebhookReceiver()
    server = BackgroundServer()
    server.app = create_app(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        public_url=server.url,
        api_key=API_KEY,
        retry_delays=RETRY_DELAYS,
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        stripe_secret_key="",
        stripe_api_base=server.url,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    recording = Recording()
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        receiver.server,
        server,
        httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as http,
    ):
        _record_requests(recording, monkeypatch)
        client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url})
        gateway = StripeGateway(settings)
        driver = GatewayDriver(gateway, recording)
        _run(Sandbox(server.url, client, http, receiver, server.app), driver)
        count = len(http.get("/_sandbox/events").json()["data"])
        for delivery in receiver.wait_for(count, timeout=10.0):
            recording.events.append(
                driver.verify_webhook(delivery.body, delivery.headers["stripe-signature"])
            )
        yield Scenario(recording, driver.called)


def _run(sandbox: Sandbox, gateway: Any) -> None:
    """Every request the app makes, and the payer, bank and card network moves in between."""
    since = int(time.time()) - 5

    def checkout() -> dict[str, Any]:
        session: dict[str, Any] = gateway.create_checkout_session(
            email="ada@example.com",
            name="Ada Lovelace",
            track=TRACKS[DP],
            success_url="http://127.0.0.1:8000/welcome?session_id={CHECKOUT_SESSION_ID}",
            cancel_url="http://127.0.0.1:8000/enroll?cancelled=1",
            idempotency_key=f"checkout-{uuid.uuid4()}",
            # As the checkout endpoint sends them: the seat's lifetime and recovery.
            expires_at=int(time.time()) + 30 * 60,
            recovery=True,
            cohort="DP-2027-01",
        )
        return session

    def control(path: str, **body: Any) -> dict[str, Any]:
        response = sandbox.http.post(f"/_sandbox{path}", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    paid = checkout()
    gateway.retrieve_checkout_session(paid["id"])
    gateway.retrieve_checkout_session(paid["id"], expand_line_items=True)
    paid_intent = control(f"/checkout/sessions/{paid['id']}/pay")["payment_intent"]["id"]
    gateway.retrieve_checkout_session(paid["id"], expand_line_items=True)
    assert gateway.find_session_for_payment_intent(paid_intent)["id"] == paid["id"]
    assert gateway.find_session_for_payment_intent("pi_unknown") is None

    settled = checkout()
    control(f"/checkout/sessions/{settled['id']}/pay", **{"async": True})
    settled_result = control(f"/checkout/sessions/{settled['id']}/async_result", succeeded=True)
    failed = checkout()
    control(f"/checkout/sessions/{failed['id']}/pay", **{"async": True})
    failed_result = control(f"/checkout/sessions/{failed['id']}/async_result", succeeded=False)
    expired = checkout()
    control(f"/checkout/sessions/{expired['id']}/consent", promotions="opt_in")
    sandbox.client.v1.checkout.sessions.expire(expired["id"])
    # The expired Session's recovery link makes a new one, `recovered_from` the old.
    recovery = gateway.retrieve_checkout_session(expired["id"])["after_expiration"]["recovery"]
    recovered_page = sandbox.http.get(recovery["url"].removeprefix(sandbox.url))
    assert recovered_page.status_code == 303, recovered_page.text
    recovered_id = recovered_page.headers["location"].rsplit("/", 1)[-1]
    assert gateway.retrieve_checkout_session(recovered_id)["recovered_from"] == expired["id"]

    # A page of one, so the SDK's auto-pagination sends `starting_after` as well.
    listed = gateway.list_paid_sessions(since, limit=1)
    assert {s["id"] for s in listed} == {paid["id"], settled["id"]}
    refund = gateway.refund_payment(paid_intent, f"refund-{uuid.uuid4()}")

    disputed_charge = settled_result["charge"]["id"]
    dispute = control(f"/charges/{disputed_charge}/dispute")
    control(f"/disputes/{dispute['id']}/close", status="lost")

    # Everything else the app may read, in each state it can be in.
    v1 = sandbox.client.v1
    for intent in (paid_intent, settled_result["payment_intent"]["id"]):
        v1.payment_intents.retrieve(intent)
    v1.payment_intents.retrieve(
        failed_result["payment_intent"]["id"], {"expand": ["latest_charge"]}
    )
    for charge in (refund["charge"], disputed_charge, failed_result["charge"]["id"]):
        v1.charges.retrieve(charge)
    v1.refunds.retrieve(refund["id"], {"expand": ["charge", "payment_intent"]})
    v1.disputes.retrieve(dispute["id"])
    v1.checkout.sessions.retrieve(paid["id"], {"expand": ["payment_intent", "line_items"]})
    v1.checkout.sessions.line_items.list(paid["id"])
    events = v1.events.list({"limit": 100})
    v1.events.retrieve(events.data[0].id)


def _endpoint(exchange: Exchange) -> Endpoint:
    for endpoint in SDK_ENDPOINTS:
        if endpoint.matches(exchange.method, exchange.path):
            return endpoint
    raise AssertionError(f"{exchange.label}: no endpoint of the SDK's services sends this")


def _template(path: str) -> str:
    """`/v1/refunds/{refund}` and `/v1/refunds/{refund_id}` name the same endpoint."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def _report(problems: list[str]) -> str:
    return "\n" + "\n".join(problems)


def _data_object_errors(event: dict[str, Any]) -> list[str]:
    """`data.object` of an event fits the class its type announces (stripe.Event leaves it
    untyped)."""
    kind = event["type"]
    if kind not in EVENT_OBJECTS:
        return [f"type: {kind!r} has no entry in EVENT_OBJECTS"]
    errors = object_errors(event["data"]["object"], EVENT_OBJECTS[kind])
    return [f"{kind} data.object.{e}" for e in errors]


class TestRequests:
    def test_every_gateway_method_sends_what_its_params_type_allows(
        self, scenario: Scenario
    ) -> None:
        public = {
            name
            for name, _ in inspect.getmembers(StripeGateway, inspect.isfunction)
            if not name.startswith("_")
        }
        assert public <= scenario.gateway_calls, "the scenario must call every gateway method"
        sending = {e.gateway_method for e in scenario.recording.exchanges if e.gateway_method}
        assert sending == public - NO_REQUEST_GATEWAY_METHODS

        problems = [
            f"{exchange.label} [{_endpoint(exchange).params_type.__name__}] {error}"
            for exchange in scenario.recording.exchanges
            for error in param_errors(exchange.params, _endpoint(exchange).params_type)
        ]
        assert not problems, _report(problems)

    def test_the_sandbox_accepts_exactly_the_parameters_stripe_defines(self) -> None:
        """Its allow-lists decide what it rejects as unknown, as Stripe would."""
        allow_lists = {
            "SESSION_CREATE_PARAMS": SessionCreateParams,
            "LINE_ITEM_PARAMS": SessionCreateParamsLineItem,
            "PRICE_DATA_PARAMS": SessionCreateParamsLineItemPriceData,
            "PRODUCT_DATA_PARAMS": SessionCreateParamsLineItemPriceDataProductData,
            "PAYMENT_INTENT_DATA_PARAMS": SessionCreateParamsPaymentIntentData,
            "SESSION_LIST_PARAMS": SessionListParams,
            "REFUND_CREATE_PARAMS": RefundCreateParams,
            "EVENT_LIST_PARAMS": EventListParams,
            "PAGE_PARAMS": SessionLineItemListParams,
        }
        problems = []
        for name, params_type in allow_lists.items():
            ours: frozenset[str] = getattr(sandbox_service, name)
            stripes = set(typed_dict_fields(params_type)[0])
            if ours - stripes:
                problems.append(f"{name} accepts what Stripe does not: {sorted(ours - stripes)}")
            if stripes - ours:
                problems.append(f"{name} rejects what Stripe accepts: {sorted(stripes - ours)}")
        assert not problems, _report(problems)


class TestObjects:
    def test_every_sandbox_route_is_an_sdk_endpoint_the_scenario_calls(
        self, scenario: Scenario
    ) -> None:
        routes = {
            (method.lower(), route.path)
            for route in api.router.routes
            if isinstance(route, APIRoute) and "{path:path}" not in route.path
            for method in route.methods or ()
        }
        sdk = {(e.method, _template(e.path)) for e in SDK_ENDPOINTS}
        unknown = {
            (method, path) for method, path in routes if (method, _template(path)) not in sdk
        }
        assert not unknown, f"routes with no SDK endpoint: {sorted(unknown)}"
        called = {
            (e.method, _template(e.path)) for e in map(_endpoint, scenario.recording.exchanges)
        }
        uncalled = {
            (method, path) for method, path in routes if (method, _template(path)) not in called
        }
        assert not uncalled, f"the scenario never calls {sorted(uncalled)}"

    def test_every_answer_fits_the_resource_class_its_endpoint_returns(
        self, scenario: Scenario
    ) -> None:
        problems: list[str] = []
        for exchange in scenario.recording.exchanges:
            assert exchange.status == 200, f"{exchange.label}: {exchange.body}"
            returns = _endpoint(exchange).returns
            found = object_errors(exchange.body, returns)
            if returns is stripe.Event:
                found += _data_object_errors(exchange.body)
            elif returns == ListObject[stripe.Event]:
                for event in exchange.body["data"]:
                    found += _data_object_errors(event)
            problems += [f"{exchange.label}: {e}" for e in found]
        assert not problems, _report(problems)

    def test_every_webhook_event_fits_the_event_and_its_object(self, scenario: Scenario) -> None:
        emitted = _emitted_event_types()
        assert emitted == set(EVENT_OBJECTS), "EVENT_OBJECTS must name each event the sandbox emits"
        delivered = {event["type"] for event in scenario.recording.events}
        assert delivered == emitted, f"never triggered: {sorted(emitted - delivered)}"

        problems = [
            f"webhook {event['id']}: {error}"
            for event in scenario.recording.events
            for error in object_errors(event, stripe.Event) + _data_object_errors(event)
        ]
        assert not problems, _report(problems)


class TestTheValidator:
    """It fails on each kind of disagreement, naming where, on Stripe's own example objects."""

    CREATE: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {"quantity": 1, "price_data": {"currency": "usd", "product_data": {"name": "DP"}}}
        ],
        "metadata": {"track": "DP"},
    }

    def test_it_accepts_a_well_formed_request(self) -> None:
        assert param_errors(self.CREATE, SessionCreateParams) == []

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            ({"payment_method_types": ["card"]}, "payment_method_types: unknown parameter"),
            ({"idempotency_key": "k"}, "idempotency_key: unknown parameter"),
            ({"mode": "pay"}, "mode: 'pay' is not one of 'payment', 'setup', 'subscription'"),
            ({"expires_at": "1700000000"}, "expires_at: expected int, got str '1700000000'"),
            ({"allow_promotion_codes": "true"}, "allow_promotion_codes: expected bool"),
            ({"metadata": {"n": 1}}, "metadata[n]: expected str, got int 1"),
            (
                {"line_items": [{"price_data": {"product_data": {"name": "DP"}}}]},
                "line_items[0][price_data][currency]: missing required parameter",
            ),
            (
                {"line_items": [{"quantity": 1, "price": "p", "colour": "red"}]},
                "line_items[0][colour]: unknown parameter (SessionCreateParamsLineItem)",
            ),
        ],
    )
    def test_it_names_what_stripe_would_reject(self, change: dict[str, Any], error: str) -> None:
        errors = param_errors({**self.CREATE, **change}, SessionCreateParams)

        assert any(e.startswith(error) for e in errors), errors

    def test_it_accepts_stripes_example_objects(self) -> None:
        fixtures = Fixtures.load()
        for resource, cls in FIXTURE_CLASSES.items():
            errors = object_errors(fixtures.new(resource), cls)
            assert errors == KNOWN_FIXTURE_GAPS.get(resource, []), (resource, errors)

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            ({"colour": "red"}, "colour: not a field of Session"),
            ({"created": None}, "created: expected int, got NoneType None"),
            ({"amount_total": "4900"}, "amount_total: expected int, got str '4900'"),
            ({"status": "paid"}, "status: 'paid' is not one of 'complete', 'expired', 'open'"),
            ({"livemode": 0}, "livemode: expected bool, got int 0"),
            (
                {"automatic_tax": {"liability": None, "provider": None, "status": None}},
                "automatic_tax.enabled: missing (Session.AutomaticTax requires it)",
            ),
            (
                {"customer_details": {"tax_ids": [{"type": "eu_vat", "value": 1}]}},
                "customer_details.tax_ids[0].value: expected str, got int 1",
            ),
            ({"line_items": {"object": "list", "data": []}}, "line_items.has_more: missing"),
        ],
    )
    def test_it_names_what_stripe_would_not_send(self, change: dict[str, Any], error: str) -> None:
        session = {**Fixtures.load().new("checkout.session"), **change}

        errors = object_errors(session, stripe.checkout.Session)

        assert any(e.startswith(error) for e in errors), errors

    def test_a_required_field_may_not_be_missing(self) -> None:
        session = Fixtures.load().new("checkout.session")
        del session["expires_at"]

        assert object_errors(session, stripe.checkout.Session) == [
            "expires_at: missing (Session requires it)"
        ]


def _emitted_event_types() -> set[str]:
    """The event types in the sandbox's `self._emit("...", ...)` calls."""
    tree = ast.parse(Path(inspect.getfile(sandbox_service)).read_text())
    return {
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_emit"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
