"""Stripe's webhook: verify the signature, record the event, run its handler from the table.

The handlers are the domains' (`core/enrollment/webhooks.py`); here their "redeliver"
failures become 503s, so Stripe retries.
"""

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import stripe
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from temporalio.client import (
    Client,
)

from api.errors import AppError, Unavailable
from api.payments.errors import StripeTestModeRefused, TemporalDown
from api.payments.schemas import StripeEvent
from core import metrics
from core import repository as repo
from core.db import session_scope
from core.enrollment.webhooks import dispatch
from core.payments.events import EventContext, StripeUnreachable
from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings
from core.temporal import TemporalUnavailable

log = logging.getLogger(__name__)


async def handle_webhook(
    payload: bytes,
    signature: str | None,
    gateway: StripeGateway,
    client: Client,
    settings: Settings,
    engine: sa.Engine,
) -> str:
    if not signature:
        raise AppError("Missing Stripe-Signature header", error="Invalid signature")
    try:
        # In a worker thread: hashing and parsing up to 512 KB, and splitting a signature
        # header of any length, are not the event loop's work.
        event = await run_in_threadpool(gateway.verify_webhook, payload, signature)
    except stripe.SignatureVerificationError:
        raise AppError(
            "The signature does not match the payload", error="Invalid signature"
        ) from None
    except ValueError:
        raise AppError("The body is not a Stripe event", error="Invalid payload") from None
    if not settings.accepts_stripe_mode(livemode=event.get("livemode") is True):
        raise StripeTestModeRefused("This deployment does not act on Stripe test-mode events.")
    try:
        # Strict, as published: the envelope the handlers read, sized for the stripe_event row.
        StripeEvent.model_validate(event, strict=True)
    except ValidationError:
        raise AppError("The body is not a Stripe event", error="Invalid payload") from None
    etype: str = event["type"]
    obj: dict[str, Any] = event["data"]["object"]
    session_id = obj.get("id") if obj.get("object") == "checkout.session" else None
    # Blocking DB writes run in the thread pool: the event loop keeps acknowledging.
    await run_in_threadpool(
        _in_transaction, engine, repo.record_stripe_event,
        event["id"], etype, event.get("created"), session_id,
    )  # fmt: skip
    try:
        outcome = await dispatch(
            etype, obj, EventContext(gateway, client, settings, engine, event["id"])
        )
    except StripeUnreachable as err:
        raise Unavailable(str(err)) from None
    except TemporalUnavailable as err:
        raise TemporalDown(str(err)) from None
    metrics.WEBHOOK_EVENTS.labels(etype, outcome).inc()
    await run_in_threadpool(
        _in_transaction, engine, repo.set_stripe_event_outcome, event["id"], outcome
    )
    log.info(
        "webhook handled", extra={"event_id": event["id"], "event_type": etype, "outcome": outcome}
    )
    return outcome


def _in_transaction(engine: sa.Engine, query: Callable[..., Any], *args: Any) -> Any:
    with session_scope(engine) as db:
        return query(db, *args)
