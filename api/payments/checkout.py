"""Creating an anonymous Checkout Session: the redirect rules and the enrollment row."""

import logging
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
import stripe
from sqlmodel import Session

from api.errors import AppError
from api.payments.schemas import CheckoutCreate
from core import metrics
from core import repository as repo
from core.cohorts import service as cohorts
from core.contracts import (
    EnrollmentStatus,
    workflow_id_for,
)
from core.crypto import new_token, token_hash
from core.models import Enrollment, utcnow
from core.payments.stripe_gateway import CHECKOUT_SESSION_PLACEHOLDER, StripeGateway
from core.settings import Settings
from core.tracks import TRACKS
from core.urls import is_allowed_redirect

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^cs_(test|live)_[A-Za-z0-9]{8,200}$")


def _redirect(url: str | None, default: str, settings: Settings, field: str) -> str:
    url = url or default
    if not is_allowed_redirect(url, settings.redirect_origins):
        raise AppError(
            f"{field} must be on an allowed origin", error="Invalid redirect URL", field=field
        )
    return url


def _with_session_placeholder(url: str) -> str:
    if CHECKOUT_SESSION_PLACEHOLDER in url:
        return url
    parts = urlsplit(url)
    query = (
        parts.query + "&" if parts.query else ""
    ) + f"session_id={CHECKOUT_SESSION_PLACEHOLDER}"
    return urlunsplit(parts._replace(query=query))


def create_checkout(
    db: Session, gateway: StripeGateway, settings: Settings, body: CheckoutCreate
) -> tuple[dict[str, Any], str]:
    """Returns the Stripe Session and the browser nonce to set as an HttpOnly cookie.

    The seat is held first, in its own committed transaction (a sold-out cohort is a 409
    before anything is asked of Stripe; a waitlist offer brings its own held seat), then
    the Session is created to expire with the hold."""
    base = settings.public_base_url
    success_url = _redirect(body.success_url, f"{base}/payment/success", settings, "success_url")
    cancel_url = _redirect(body.cancel_url, f"{base}/payment/cancel", settings, "cancel_url")
    track = TRACKS[body.track]
    expires_at = utcnow() + timedelta(minutes=settings.checkout_hold_minutes)
    engine = db.get_bind()
    assert isinstance(engine, sa.Engine)
    seat = cohorts.reserve_seat(
        db,
        track=body.track,
        code=body.cohort,
        offer_token=body.offer,
        email=body.email,
        expires_at=expires_at,
    )
    # The one commit before the request's end: the hold is seen by every other buyer, and
    # the cohort row is not locked through the Stripe round trip.
    db.commit()
    nonce = new_token()
    try:
        session = gateway.create_checkout_session(
            email=body.email,
            name=body.name,
            track=track,
            success_url=_with_session_placeholder(success_url),
            cancel_url=cancel_url,
            idempotency_key=f"checkout-{token_hash(nonce)[:32]}",
            expires_at=int(expires_at.timestamp()),
            recovery=settings.checkout_recovery,
            cohort=seat.code,
        )
    except stripe.StripeError as err:
        log.warning("stripe refused checkout creation: %s", type(err).__name__)
        cohorts.abandon_hold(engine, seat)
        raise AppError(
            "The payment provider did not accept the request; please try again.",
            status_code=502,
            error="Payment provider error",
        ) from None
    enrollment = Enrollment(
        checkout_session_id=session["id"],
        workflow_id=workflow_id_for(session["id"]),
        email=body.email,
        name=body.name,
        track=body.track,
        status=EnrollmentStatus.CHECKOUT_CREATED,
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        browser_nonce_hash=token_hash(nonce),
    )
    db.add(enrollment)
    db.flush()
    cohorts.attach_session(db, seat, session["id"], expires_at)
    repo.add_audit(db, "checkout_created", actor="visitor", enrollment_id=enrollment.id)
    metrics.CHECKOUTS_CREATED.labels(body.track).inc()
    return session, nonce
