"""The hosted Checkout page a payer is sent to (`session.url`), and charge receipts."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sandbox.deps import SandboxDep
from sandbox.errors import CardDeclined, PayerInputError, SessionNotPayable, StripeError
from sandbox.pages import SECURITY_HEADERS, format_amount, render
from sandbox.service import CardInput, StripeSandbox

router = APIRouter(include_in_schema=False)


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _message(
    heading: str,
    message: str,
    status_code: int,
    link_url: str | None = None,
    link_text: str = "",
) -> HTMLResponse:
    return _html(
        render(
            "message.html",
            heading=heading,
            message=message,
            link_url=link_url,
            link_text=link_text,
        ),
        status_code,
    )


def _not_found() -> HTMLResponse:
    return _message(
        "Page not found",
        "This checkout link is not valid. Check the link or start again from the store.",
        404,
    )


def _not_open(session: dict[str, Any]) -> HTMLResponse:
    if session["status"] == "complete":
        success_url = session["success_url"]
        return _message(
            "Already paid",
            "This checkout session is already complete; you have not been charged again.",
            409,
            link_url=success_url.replace("{CHECKOUT_SESSION_ID}", session["id"])
            if success_url
            else None,
            link_text="Continue",
        )
    return _message(
        "Checkout session expired",
        "This checkout session has expired and can no longer be paid. Start a new checkout.",
        410,
        link_url=session["cancel_url"],
        link_text="Return to the store",
    )


def _checkout_page(
    sandbox: StripeSandbox,
    session_id: str,
    *,
    form: dict[str, str] | None = None,
    error: StripeError | None = None,
) -> Response:
    try:
        session, line_items = sandbox.checkout_page(session_id)
    except StripeError as exc:
        if exc.status == 404:
            return _not_found()
        raise
    if session["status"] != "open":
        return _not_open(session)
    form = form or {}
    currency = session["currency"]
    items = [
        {
            "name": item["description"],
            "quantity": item["quantity"],
            "amount": format_amount(item["amount_total"], currency),
        }
        for item in line_items
    ]
    body = render(
        "checkout.html",
        action=f"/c/pay/{session_id}",
        items=items,
        total=format_amount(session["amount_total"], currency),
        email=session["customer_email"] or form.get("email", ""),
        email_locked=bool(session["customer_email"]),
        card_number=form.get("card_number", ""),
        card_expiry=form.get("card_expiry", ""),
        billing_name=form.get("billing_name", ""),
        cancel_url=session["cancel_url"],
        error=error.message if error else None,
        error_field=(error.param or "card_number") if error else None,
    )
    return _html(body, error.status if error else 200)


@router.get("/c/pay/{session_id}")
async def checkout_page(session_id: str, sandbox: SandboxDep) -> Response:
    return _checkout_page(sandbox, session_id)


@router.post("/c/pay/{session_id}")
async def submit_checkout(session_id: str, request: Request, sandbox: SandboxDep) -> Response:
    body = (await request.body()).decode("utf-8", errors="replace")
    form = dict(parse_qsl(body, keep_blank_values=True))
    card = CardInput(
        number=form.get("card_number", ""),
        expiry=form.get("card_expiry", ""),
        cvc=form.get("card_cvc", ""),
    )
    try:
        result = sandbox.pay_checkout_session(
            session_id, card, email=form.get("email"), name=form.get("billing_name")
        )
    except (CardDeclined, PayerInputError) as exc:
        return _checkout_page(sandbox, session_id, form=form, error=exc)
    except SessionNotPayable:
        return _checkout_page(sandbox, session_id)
    except StripeError as exc:
        if exc.status == 404:
            return _not_found()
        raise
    if result.redirect_url:
        return RedirectResponse(result.redirect_url, status_code=303)
    return _message("Payment successful", "Thanks! Your payment is complete.", 200)


@router.get("/c/recover/{token}")
async def recover(token: str, sandbox: SandboxDep) -> Response:
    """An expired Session's recovery link: a new Session (`recovered_from`), then its page."""
    try:
        session = sandbox.recover_session(token)
    except SessionNotPayable:
        return _message("Link expired", "This checkout link has expired.", 410)
    except StripeError as exc:
        if exc.status == 404:
            return _not_found()
        raise
    return RedirectResponse(session["url"], status_code=303)


@router.get("/receipts/{charge_id}")
async def receipt(charge_id: str, sandbox: SandboxDep) -> Response:
    try:
        charge = sandbox.retrieve_charge(charge_id, {})
    except StripeError as exc:
        if exc.status == 404:
            return _message("Receipt not found", "There is no payment with this reference.", 404)
        raise
    return _html(
        render(
            "receipt.html",
            amount=format_amount(charge["amount"], charge["currency"]),
            refunded=format_amount(charge["amount_refunded"], charge["currency"]),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(charge["created"])),
            charge_id=charge["id"],
        )
    )
