"""Fixtures for the Stripe sandbox tests: a fresh sandbox and webhook receiver per test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import stripe

from sandbox.app import create_app
from sandbox.server import BackgroundServer
from tests.sandbox.sandbox_testkit import (
    API_KEY,
    RETRY_DELAYS,
    WEBHOOK_SECRET,
    Sandbox,
    WebhookReceiver,
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    webhook_receiver = WebhookReceiver()
    with webhook_receiver.server:
        yield webhook_receiver


@pytest.fixture
def sandbox(receiver: WebhookReceiver) -> Iterator[Sandbox]:
    server = BackgroundServer()
    server.app = create_app(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        public_url=server.url,
        api_key=API_KEY,
        retry_delays=RETRY_DELAYS,
    )
    with server, httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as http:
        client = stripe.StripeClient(API_KEY, base_addresses={"api": server.url})
        yield Sandbox(server.url, client, http, receiver, server.app)
