"""Production acts on live Stripe objects only: a signed webhook event with livemode=false
and a cs_test_ session id given to verify-session are refused before anything is recorded,
unless ALLOW_STRIPE_TEST_MODE marks a staging deployment. Development and the tests (every
other test here) accept test mode. Real HTTP through the app, on the session's Postgres."""

import secrets
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from api.main import create_app
from core.payments.stripe_gateway import StripeGateway
from core.urls import WEBHOOK_PATH
from tests.utils.helpers import event, forged_session, production_settings, signed

SECRET = "whsec_" + secrets.token_hex(16)


def production_app(engine: sa.Engine, **overrides: object) -> FastAPI:
    settings = production_settings(stripe_webhook_secret=SECRET, **overrides)
    app = create_app(settings)
    # What the lifespan would connect; no request here goes on to Temporal or Stripe.
    app.state.engine = engine
    app.state.stripe = StripeGateway(settings)
    app.state.temporal = None
    return app


def expired(session_id: str, *, livemode: bool) -> dict[str, Any]:
    session = forged_session(email="ada@example.com", session_id=session_id)
    session.update(status="expired", payment_status="unpaid", livemode=livemode)
    evt = event("checkout.session.expired", session)
    evt["livemode"] = livemode
    return evt


async def post_event(app: FastAPI, evt: dict[str, Any]) -> httpx.Response:
    body, headers = signed(evt, SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(WEBHOOK_PATH, content=body, headers=headers)


def recorded(engine: sa.Engine, event_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT outcome FROM stripe_event WHERE id = :id"), {"id": event_id}
        ).scalar()


async def test_production_refuses_test_mode_events_and_acts_on_live_ones(
    clean_db: sa.Engine,
) -> None:
    app = production_app(clean_db)
    test_event = expired(f"cs_test_{secrets.token_hex(12)}", livemode=False)
    refused = await post_event(app, test_event)
    assert refused.status_code == 400
    assert refused.json()["error"] == "Test mode not accepted"
    assert recorded(clean_db, test_event["id"]) is None

    live_event = expired(f"cs_live_{secrets.token_hex(12)}", livemode=True)
    accepted = await post_event(app, live_event)
    assert accepted.status_code == 200 and accepted.json()["outcome"] == "ignored"
    assert recorded(clean_db, live_event["id"]) == "ignored"


async def test_a_staging_deployment_accepts_test_mode_events(clean_db: sa.Engine) -> None:
    app = production_app(
        clean_db,
        allow_stripe_test_mode=True,
        stripe_secret_key="sk_test_" + secrets.token_hex(12),
        stripe_publishable_key="pk_test_" + secrets.token_hex(12),
    )
    test_event = expired(f"cs_test_{secrets.token_hex(12)}", livemode=False)
    accepted = await post_event(app, test_event)
    assert accepted.status_code == 200
    assert recorded(clean_db, test_event["id"]) == "ignored"


async def test_production_verify_session_refuses_test_mode_sessions(clean_db: sa.Engine) -> None:
    transport = httpx.ASGITransport(app=production_app(clean_db))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(
            "/api/payments/verify-session/",
            params={"session_id": f"cs_test_{secrets.token_hex(12)}"},
        )
        malformed = await client.get(
            "/api/payments/verify-session/", params={"session_id": "cs_other_1234567890"}
        )
    assert response.status_code == 400
    assert response.json()["error"] == "Test mode not accepted"
    assert malformed.status_code == 400 and malformed.json()["error"] == "Invalid request"
