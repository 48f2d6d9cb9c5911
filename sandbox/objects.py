"""Builders for Stripe objects: a deep copy of Stripe's example, with the example's stand-in
values replaced by what Stripe returns for a simple one-off card payment."""

from __future__ import annotations

from typing import Any

from sandbox.fixtures import Fixtures
from sandbox.store import new_id


def list_object(data: list[dict[str, Any]], url: str, *, has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def checkout_session(
    fx: Fixtures,
    *,
    session_id: str,
    created: int,
    expires_at: int,
    currency: str,
    amount_total: int,
    customer_email: str | None,
    client_reference_id: str | None,
    metadata: dict[str, str],
    success_url: str | None,
    cancel_url: str | None,
    url: str,
    locale: str | None,
    submit_type: str | None,
    billing_address_collection: str | None,
) -> dict[str, Any]:
    session = fx.new("checkout.session")
    session.update(
        id=session_id,
        object="checkout.session",
        created=created,
        expires_at=expires_at,
        livemode=False,
        mode="payment",
        status="open",
        payment_status="unpaid",
        currency=currency,
        amount_subtotal=amount_total,
        amount_total=amount_total,
        customer_email=customer_email,
        client_reference_id=client_reference_id,
        metadata=metadata,
        success_url=success_url,
        cancel_url=cancel_url,
        url=url,
        locale=locale,
        submit_type=submit_type,
        billing_address_collection=billing_address_collection,
        # Since API version 2022-08-01 the PaymentIntent exists only once the payer confirms.
        payment_intent=None,
        customer=None,
        customer_account=None,
        customer_creation="if_required",
        customer_details=None,
        collected_information=None,
        after_expiration=None,
        allow_promotion_codes=None,
        automatic_tax={"enabled": False, "liability": None, "provider": None, "status": None},
        client_secret=None,
        consent=None,
        consent_collection=None,
        currency_conversion=None,
        custom_fields=[],
        custom_text={
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        discounts=[],
        invoice=None,
        invoice_creation={
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        },
        payment_link=None,
        payment_method_collection="if_required",
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=["card"],
        phone_number_collection={"enabled": False},
        recovered_from=None,
        saved_payment_method_options=None,
        setup_intent=None,
        shipping_address_collection=None,
        shipping_cost=None,
        shipping_options=[],
        subscription=None,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        ui_mode="hosted_page",
        adaptive_pricing={"enabled": False},
        permissions=None,
        wallet_options=None,
        origin_context=None,
        integration_identifier=None,
        managed_payments={"enabled": False},
    )
    return session


def customer_details(email: str | None, name: str | None) -> dict[str, Any]:
    return {
        "address": {
            "city": None,
            "country": None,
            "line1": None,
            "line2": None,
            "postal_code": None,
            "state": None,
        },
        "email": email,
        "name": name,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
        "business_name": None,
        "individual_name": None,
    }


def line_item(
    fx: Fixtures,
    *,
    created: int,
    currency: str,
    unit_amount: int,
    quantity: int,
    name: str,
    description: str | None,
) -> dict[str, Any]:
    item = fx.new("item")
    price = item["price"]
    price.update(
        id=new_id("price_"),
        created=created,
        currency=currency,
        product=new_id("prod_", 14),
        recurring=None,
        transform_quantity=None,
        type="one_time",
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        active=False,  # inline price_data creates an archived price
        metadata={},
        custom_unit_amount=None,
    )
    amount = unit_amount * quantity
    item.update(
        id=new_id("li_"),
        object="item",
        amount_discount=0,
        amount_subtotal=amount,
        amount_tax=0,
        amount_total=amount,
        currency=currency,
        description=description or name,
        quantity=quantity,
        metadata={},
        adjustable_quantity=None,
    )
    return item


def payment_intent(
    fx: Fixtures,
    *,
    created: int,
    amount: int,
    currency: str,
    metadata: dict[str, str],
    description: str | None,
    receipt_email: str | None,
    statement_descriptor: str | None,
    statement_descriptor_suffix: str | None,
    payment_method_type: str,
) -> dict[str, Any]:
    intent = fx.new("payment_intent")
    intent_id = new_id("pi_")
    intent.update(
        id=intent_id,
        object="payment_intent",
        amount=amount,
        amount_capturable=0,
        amount_details={"tip": {}},
        amount_received=0,
        application=None,
        application_fee_amount=None,
        automatic_payment_methods=None,
        canceled_at=None,
        cancellation_reason=None,
        capture_method="automatic",
        client_secret=f"{intent_id}_secret_{new_id('', 25)}",
        confirmation_method="automatic",
        created=created,
        currency=currency,
        customer=None,
        customer_account=None,
        description=description,
        excluded_payment_method_types=None,
        last_payment_error=None,
        latest_charge=None,
        livemode=False,
        metadata=metadata,
        next_action=None,
        on_behalf_of=None,
        payment_method=new_id("pm_"),
        payment_method_configuration_details=None,
        payment_method_options={},
        payment_method_types=[payment_method_type],
        processing=None,
        receipt_email=receipt_email,
        review=None,
        setup_future_usage=None,
        shipping=None,
        source=None,
        statement_descriptor=statement_descriptor,
        statement_descriptor_suffix=statement_descriptor_suffix,
        status="processing",
        transfer_data=None,
        transfer_group=None,
        managed_payments={"enabled": False},
    )
    return intent


def card_details(brand: str, last4: str, exp_month: int, exp_year: int) -> dict[str, Any]:
    return {
        "type": "card",
        "card": {
            "amount_authorized": None,
            "authorization_code": None,
            "brand": brand,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "pass",
            },
            "country": "US",
            "exp_month": exp_month,
            "exp_year": exp_year,
            "extended_authorization": {"status": "disabled"},
            "fingerprint": new_id("", 16),
            "funding": "credit",
            "incremental_authorization": {"status": "unavailable"},
            "installments": None,
            "last4": last4,
            "mandate": None,
            "multicapture": {"status": "unavailable"},
            "network": brand,
            "network_token": {"used": False},
            "network_transaction_id": new_id("", 15),
            "overcapture": {"maximum_amount_capturable": 0, "status": "unavailable"},
            "regulated_status": "unregulated",
            "three_d_secure": None,
            "transaction_link_id": None,
            "wallet": None,
        },
    }


def bank_account_details() -> dict[str, Any]:
    """A delayed-notification method (ACH debit), used for the async payment path."""
    return {
        "type": "us_bank_account",
        "us_bank_account": {
            "account_holder_type": "individual",
            "account_type": "checking",
            "bank_name": "STRIPE TEST BANK",
            "fingerprint": new_id("", 16),
            "last4": "6789",
            "mandate": None,
            "payment_reference": None,
            "routing_number": "110000000",
        },
    }


def charge(
    fx: Fixtures,
    *,
    created: int,
    intent: dict[str, Any],
    email: str | None,
    name: str | None,
    method_details: dict[str, Any],
    receipt_url: str,
    status: str,
) -> dict[str, Any]:
    result = fx.new("charge")
    charge_id = new_id("ch_")
    succeeded = status == "succeeded"
    result.update(
        id=charge_id,
        object="charge",
        amount=intent["amount"],
        amount_captured=intent["amount"] if succeeded else 0,
        amount_refunded=0,
        application=None,
        application_fee=None,
        application_fee_amount=None,
        balance_transaction=new_id("txn_") if succeeded else None,
        billing_details={
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": email,
            "name": name,
            "phone": None,
            "tax_id": None,
        },
        calculated_statement_descriptor="SANDBOX",
        captured=succeeded,
        created=created,
        currency=intent["currency"],
        customer=None,
        description=intent["description"],
        disputed=False,
        failure_balance_transaction=None,
        failure_code=None,
        failure_message=None,
        fraud_details={},
        livemode=False,
        # Charges created by a PaymentIntent carry its metadata.
        metadata=dict(intent["metadata"]),
        on_behalf_of=None,
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        paid=succeeded,
        payment_intent=intent["id"],
        payment_method=intent["payment_method"],
        payment_method_details=method_details,
        receipt_email=intent["receipt_email"],
        receipt_number=None,
        receipt_url=receipt_url.format(charge_id=charge_id),
        refunded=False,
        refunds=list_object([], f"/v1/charges/{charge_id}/refunds", has_more=False),
        review=None,
        shipping=None,
        source=None,
        source_transfer=None,
        statement_descriptor=intent["statement_descriptor"],
        statement_descriptor_suffix=intent["statement_descriptor_suffix"],
        status=status,
        transfer_data=None,
        transfer_group=None,
    )
    return result


def refund(
    fx: Fixtures,
    *,
    created: int,
    charge_obj: dict[str, Any],
    amount: int,
    reason: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    result = fx.new("refund")
    result.update(
        id=new_id("re_"),
        object="refund",
        amount=amount,
        balance_transaction=new_id("txn_"),
        charge=charge_obj["id"],
        created=created,
        currency=charge_obj["currency"],
        destination_details={
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        metadata=metadata,
        payment_intent=charge_obj["payment_intent"],
        payment_method=charge_obj["payment_method"],
        reason=reason,
        receipt_number=None,
        source_transfer_reversal=None,
        status="succeeded",
        transfer_reversal=None,
        customer=None,
        customer_account=None,
    )
    return result


def dispute(
    fx: Fixtures,
    *,
    created: int,
    charge_obj: dict[str, Any],
    amount: int,
    reason: str,
    due_by: int,
) -> dict[str, Any]:
    result = fx.new("dispute")
    card = charge_obj["payment_method_details"].get("card") or {}
    result.update(
        id=new_id("dp_"),
        object="dispute",
        amount=amount,
        balance_transactions=[],
        charge=charge_obj["id"],
        created=created,
        currency=charge_obj["currency"],
        is_charge_refundable=False,
        livemode=False,
        metadata={},
        payment_intent=charge_obj["payment_intent"],
        payment_method_details={
            "card": {
                "brand": card.get("brand", "visa"),
                "case_type": "chargeback",
                "network_reason_code": "10.4",
                "network": card.get("network", "visa"),
            },
            "type": "card",
        },
        reason=reason,
        status="needs_response",
        enhanced_eligibility_types=[],
    )
    result["evidence_details"].update(
        due_by=due_by,
        has_evidence=False,
        past_due=False,
        submission_count=0,
        submission_method="not_submitted",
    )
    return result


def event(
    fx: Fixtures,
    *,
    event_type: str,
    created: int,
    obj: dict[str, Any],
    api_version: str,
    pending_webhooks: int,
    request_id: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    result = fx.new("event")
    result.update(
        id=new_id("evt_"),
        object="event",
        type=event_type,
        created=created,
        livemode=False,
        api_version=api_version,
        data={"object": obj},
        pending_webhooks=pending_webhooks,
        request={"id": request_id, "idempotency_key": idempotency_key},
    )
    return result
