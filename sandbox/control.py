"""Operator and test controls under /_sandbox: pay, settle, dispute, inspect and resend events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from sandbox.deps import DispatcherDep, SandboxDep, stripe_json
from sandbox.service import CardInput, PaymentResult

router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])


class PayRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    card_number: str = "4242 4242 4242 4242"
    email: str | None = None
    billing_name: str | None = None
    # Omitted expiry/CVC count as valid ones; the hosted form requires them.
    card_expiry: str | None = None
    card_cvc: str | None = None
    # A delayed-notification method: the Session completes unpaid until async_result.
    delayed: bool = Field(default=False, alias="async")


class AsyncResultRequest(BaseModel):
    succeeded: bool


class DisputeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = "fraudulent"
    amount: int | None = None


class CloseDisputeRequest(BaseModel):
    status: str


class ConsentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promotions: Literal["opt_in", "opt_out"]


class WebhookUrlRequest(BaseModel):
    url: str | None


def _payment(result: PaymentResult) -> dict[str, Any]:
    return {
        "status": result.payment_intent["status"],
        "checkout_session": result.session,
        "payment_intent": result.payment_intent,
        "charge": result.charge,
        "redirect_url": result.redirect_url,
    }


@router.get("/health")
async def health(sandbox: SandboxDep) -> dict[str, Any]:
    return {"status": "ok", "api_version": sandbox.api_version, "webhook_url": sandbox.webhook_url}


@router.post("/checkout/sessions/{session_id}/pay")
async def pay(
    session_id: str,
    sandbox: SandboxDep,
    body: Annotated[PayRequest | None, Body()] = None,
) -> Response:
    """Pay as the hosted form would; a decline answers 402 with Stripe's card_error."""
    request = body or PayRequest()
    card = CardInput(number=request.card_number, expiry=request.card_expiry, cvc=request.card_cvc)
    result = sandbox.pay_checkout_session(
        session_id,
        card,
        email=request.email,
        name=request.billing_name,
        delayed=request.delayed,
    )
    return stripe_json(_payment(result))


@router.post("/checkout/sessions/{session_id}/consent")
async def consent(session_id: str, body: ConsentRequest, sandbox: SandboxDep) -> Response:
    """The payer answered the promotions box on the page (and may still leave unpaid)."""
    return stripe_json(sandbox.record_consent(session_id, body.promotions))


@router.post("/checkout/sessions/{session_id}/async_result")
async def async_result(session_id: str, body: AsyncResultRequest, sandbox: SandboxDep) -> Response:
    return stripe_json(
        _payment(sandbox.settle_delayed_payment(session_id, succeeded=body.succeeded))
    )


@router.post("/charges/{charge_id}/dispute")
async def dispute_charge(
    charge_id: str,
    sandbox: SandboxDep,
    body: Annotated[DisputeRequest | None, Body()] = None,
) -> Response:
    request = body or DisputeRequest()
    return stripe_json(
        sandbox.create_dispute(charge_id, reason=request.reason, amount=request.amount)
    )


@router.post("/disputes/{dispute_id}/close")
async def close_dispute(
    dispute_id: str, body: CloseDisputeRequest, sandbox: SandboxDep
) -> Response:
    return stripe_json(sandbox.close_dispute(dispute_id, status=body.status))


@router.get("/events")
async def events(sandbox: SandboxDep, type: str | None = None) -> Response:
    """Every event, oldest first, with each delivery attempt and the outcome."""
    records = sandbox.event_records(type)
    return stripe_json({"object": "list", "data": records, "has_more": False})


@router.get("/events/{event_id}")
async def event(event_id: str, sandbox: SandboxDep) -> Response:
    return stripe_json(sandbox.event_record(event_id))


@router.post("/events/{event_id}/resend")
async def resend_event(event_id: str, sandbox: SandboxDep, dispatcher: DispatcherDep) -> Response:
    """One more signed attempt now (like the dashboard's Resend); answers after it."""
    delivered = await dispatcher.resend(event_id)
    return stripe_json({"delivered": delivered, **sandbox.event_record(event_id)})


@router.get("/webhook_url")
async def get_webhook_url(sandbox: SandboxDep) -> dict[str, Any]:
    return {"url": sandbox.webhook_url}


@router.post("/webhook_url")
async def set_webhook_url(body: WebhookUrlRequest, sandbox: SandboxDep) -> dict[str, Any]:
    sandbox.set_webhook_url(body.url)
    return {"url": sandbox.webhook_url}
