"""Test kit for the Stripe sandbox: a scripted webhook receiver and a handle on one sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox.server import BackgroundServer

WEBHOOK_SECRET = "whsec_test_sandbox_0123456789"
API_KEY = "sk_test_sandbox"
# Short backoff so retry tests stay fast; three retries after the first attempt.
RETRY_DELAYS = (0.05, 0.05, 0.05)


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    status: int


class WebhookReceiver:
    """A stand-in webhook endpoint that records every POST and answers scripted statuses."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._statuses: list[int] = []
        self.server = BackgroundServer(
            Starlette(routes=[Route("/webhook", self._handle, methods=["POST"])])
        )

    @property
    def url(self) -> str:
        return f"{self.server.url}/webhook"

    def answer_with(self, *statuses: int) -> None:
        """Answer the next POSTs with these statuses, then 200."""
        with self._lock:
            self._statuses.extend(statuses)

    async def _handle(self, request: Request) -> JSONResponse:
        body = await request.body()
        with self._lock:
            status = self._statuses.pop(0) if self._statuses else 200
            self._deliveries.append(Delivery(body, dict(request.headers), status))
            self._lock.notify_all()
        return JSONResponse({"received": status < 300}, status_code=status)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def wait_for(self, count: int, timeout: float = 3.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._deliveries) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self._deliveries)} of {count} deliveries arrived")
                self._lock.wait(remaining)
            return list(self._deliveries)

    def events(self, count: int, timeout: float = 3.0) -> list[stripe.Event]:
        """The first `count` accepted deliveries, verified as the app will verify them."""
        accepted: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(accepted) < count:
            accepted = [d for d in self.deliveries if d.status < 300]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(accepted)} of {count} events were accepted")
            time.sleep(0.01)
        return [
            stripe.Webhook.construct_event(d.body, d.headers["stripe-signature"], WEBHOOK_SECRET)
            for d in accepted[:count]
        ]


@dataclass
class Sandbox:
    url: str
    client: stripe.StripeClient
    http: httpx.Client
    receiver: WebhookReceiver
    app: Any

    def create_session(self, **overrides: Any) -> Any:
        params: dict[str, Any] = {
            "mode": "payment",
            "customer_email": "ada@example.com",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 4900,
                        "product_data": {"name": "Data engineering track"},
                    },
                    "quantity": 1,
                }
            ],
            "metadata": {"email": "ada@example.com", "track": "data"},
            "payment_intent_data": {"metadata": {"track": "data", "email": "ada@example.com"}},
            "success_url": "http://127.0.0.1:8000/welcome?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://127.0.0.1:8000/enroll?cancelled=1",
        }
        params.update(overrides)
        return self.client.v1.checkout.sessions.create(params)

    def pay(self, session_id: str, **body: Any) -> httpx.Response:
        return self.http.post(f"/_sandbox/checkout/sessions/{session_id}/pay", json=body)

    def sandbox_events(self) -> list[dict[str, Any]]:
        return self.http.get("/_sandbox/events").json()["data"]


def wait_until(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)
